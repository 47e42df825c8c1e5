//! The plugin runtime: the only module that touches wasmtime.
//!
//! One [`PluginRuntime`] per process owns the engine (pooling allocator, epoch
//! interruption) and the linker. [`PluginRuntime::load_bytes`] compiles a component once,
//! checks which of the three worlds it implements and whether this host speaks its
//! contract version, pre-instantiates it, and returns an immutable [`Plugin`] behind an
//! `Arc`, so a running pass keeps the plugin it started with while a newer file is
//! loaded beside it.
//!
//! Every call runs with a deadline, a memory cap and optionally a fuel budget
//! ([`PluginLimits`]), in a fresh store, except that a retention policy configured once
//! ([`RetentionPlugin::configure`]) keeps its instance warm between repositories so its
//! params are parsed and its patterns compiled once; every call still sees only its own
//! input, time and seed ([`sandbox`]). Any failure — trap, timeout, memory, panic, malformed
//! answer — is a [`PluginError`] naming the plugin and the cause; callers never see a
//! partial answer.
//!
//! Code comes in two tiers ([`Tier`]). Cranelift's optimized code is what plugins normally
//! run. The daemon can serve a plugin it has never compiled before at once with Winch's
//! baseline code (a 1.1 MB plugin's swap falls from ~0.9 s to ~0.25 s; the code runs ~1.85×
//! slower: docs/benchmarks.md) while
//! Cranelift compiles it in the [`background`]; calls that start after that run the
//! optimized code. Both tiers run in the same sandbox with the same limits: Winch is a
//! tier-1 compiler of wasmtime on x86_64, with fuel and epoch interruption.

mod background;
mod backoff;
mod compile_cache;
mod function_cache;
mod names;
mod retention;
mod sandbox;
mod stale;
mod virtual_time;
mod wire;

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{Component, InstancePre, Linker, types::ComponentItem};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreContextMut, Strategy, Trap};

pub use backoff::{BackoffDecision, BackoffPlugin, Failure, OperationKind};
pub use retention::{ConfiguredPolicy, RetentionPlugin};
pub use stale::{Operation, StaleAction, StalePlugin, StaleVerdict};

use sandbox::SandboxState;

pub use function_cache::FunctionCacheStats;
pub use wire::{Columns, ContractVersion};

/// The contract (`wit/policy.wit`) this host's SDK builds plugins for.
pub const CONTRACT_VERSION: ContractVersion = ContractVersion { major: 0, minor: 2, patch: 1 };

/// Every contract version this host serves, oldest first: plugins built for 0.1 keep
/// working unchanged (`tests/fixtures/contract-0.1/` holds 0.1.0 builds the suite loads).
pub const ACCEPTED_CONTRACTS: &[ContractVersion] = &[ContractVersion { major: 0, minor: 1, patch: 0 }, CONTRACT_VERSION];

const CONTRACT_PACKAGE: &str = "tagwarden:policy";

/// How often the epoch advances; deadlines are whole multiples of it.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Table bytes per slot kept resident likewise.
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Bytes of guest stderr kept for error messages; a guest writing more traps.
const STDERR_CAPTURE_BYTES: usize = 64 * 1024;

/// Engine-wide settings, each with its reason. The CLI uses the defaults (plus its
/// compile cache); the daemon's configuration will expose them.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Largest memory cap any plugin may be given: sizes the pooling allocator's slots
    /// (virtual address space only). 4 GiB is the most a 32-bit wasm memory can use.
    pub max_memory_bytes: usize,
    /// Evaluations that may run at once (pooling allocator slots). Evaluations are
    /// CPU-bound, so a few per core is plenty.
    pub max_concurrent_evaluations: u32,
    /// Enable fuel metering (deterministic instruction budgets). Costs ~10-30% of
    /// plugin speed, so it is off unless an operator wants budgets.
    pub fuel: bool,
    /// Instances that configured retention policies may keep warm between calls, over
    /// all policies (pooling allocator slots set aside for them). 0 turns reuse off.
    pub max_warm_instances: u32,
    /// An instance whose linear memory grew past this is not kept warm, so idle warm
    /// instances pin at most `max_warm_instances` times this. The default (64 MiB, the
    /// default per-plugin cap) keeps a 100k-tag repository's instance warm.
    pub max_warm_memory_bytes: usize,
    /// Linear memory a pool slot keeps mapped after a call and resets in place (only
    /// the pages the call dirtied, where the kernel can report them: Linux 6.7+),
    /// instead of returning it to the kernel. A fresh store then starts without page
    /// faults up to this size: at 100k tags (~20 MB of guest memory) faulting it in
    /// again was half of a fresh evaluation. The price is resident memory: each slot
    /// that has run a large evaluation keeps up to this much.
    pub keep_resident_bytes: usize,
    /// A directory for compiled components, so that loading a plugin file this engine
    /// has compiled before skips the compiler (~0.5 s for gitlab-retention). `None`
    /// compiles every time. See [`compile_cache`](self) for what is trusted.
    pub compile_cache: Option<std::path::PathBuf>,
    /// Bytes of compiled functions kept in memory, so that a new version of a plugin
    /// compiles only what the versions loaded before it did not have
    /// ([`function_cache`](self)). 0 turns it off.
    pub function_cache_bytes: usize,
    /// Compile plugins loaded from the compile cache once more, in the background at low
    /// priority, so the function cache holds their functions and their first new version
    /// after a restart compiles only what changed (docs/benchmarks.md, "Plugin
    /// directory"). For the daemon; off for commands that load and exit.
    pub warm_function_cache: bool,
    /// Serve a plugin that is not in the compile cache at once with baseline code (Winch),
    /// and compile it with Cranelift in the background at low priority; its calls switch
    /// to the optimized code when that is ready ([`Tier`]). A new plugin version then goes
    /// into service in a fraction of Cranelift's compile time (docs/benchmarks.md, "Plugin
    /// directory"). For the daemon; commands that load and exit compile once, optimized.
    /// Only on x86_64, where Winch is a tier-1 compiler; elsewhere this does nothing.
    pub tiered_compilation: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_memory_bytes: 4 << 30,
            max_concurrent_evaluations: 64,
            fuel: false,
            max_warm_instances: 16,
            max_warm_memory_bytes: 64 << 20,
            keep_resident_bytes: 32 << 20,
            compile_cache: None,
            function_cache_bytes: 128 << 20,
            warm_function_cache: false,
            tiered_compilation: false,
        }
    }
}

/// The largest memory cap a plugin may be given, in MiB: a 32-bit WebAssembly memory
/// cannot grow past 4 GiB, the pool's slot size ([`RuntimeConfig::max_memory_bytes`]).
pub const MAX_PLUGIN_MEMORY_MIB: u64 = 4096;

/// The memory cap a plugin gets unless its policy says otherwise, in MiB. The input is
/// copied into the plugin's memory: gitlab-retention evaluating 1,000,000 tags (a size seed
/// 003 says is real) peaks between 160 and 192 MiB, so 64 MiB stopped at ~350,000 tags; 512
/// leaves room for longer names and hungrier plugins. Only what a plugin touches is resident.
pub const DEFAULT_PLUGIN_MEMORY_MIB: u64 = 512;

/// Per-plugin limits for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Wall-clock deadline for one call: instantiating and `create`, or one `evaluate`
    /// (or one backoff/stale decision). Default 1 s.
    pub timeout: Duration,
    /// Linear memory cap. Default [`DEFAULT_PLUGIN_MEMORY_MIB`].
    pub memory_bytes: usize,
    /// Instruction budget, when the runtime meters fuel. Default none.
    pub fuel: Option<u64>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { timeout: Duration::from_secs(1), memory_bytes: (DEFAULT_PLUGIN_MEMORY_MIB as usize) << 20, fuel: None }
    }
}

impl PluginLimits {
    fn deadline_ticks(&self) -> u64 {
        // +1: the current tick may be about to end.
        (self.timeout.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1) + 1
    }
}

/// The three plugin kinds, one WIT world each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PluginKind {
    Retention,
    Backoff,
    Stale,
}

impl PluginKind {
    fn interface(self) -> &'static str {
        match self {
            PluginKind::Retention => "retention",
            PluginKind::Backoff => "backoff",
            PluginKind::Stale => "stale",
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// What is known about a loaded plugin, as shown by `plugins inspect` and in reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginMeta {
    /// The plugin's own name (from its `info` export).
    pub name: String,
    pub version: String,
    pub description: String,
    pub kind: PluginKind,
    /// The contract version the plugin was built against, e.g. `0.1.0`.
    pub contract_version: String,
    /// sha256 of the component file, hex.
    pub sha256: String,
    pub size_bytes: usize,
    /// Whether the compiled code came from [`RuntimeConfig::compile_cache`].
    pub from_compile_cache: bool,
    /// The code it was loaded with: [`Tier::Baseline`] until its optimized code is ready
    /// ([`Plugin::tier`] says which it runs now).
    pub loaded_tier: Tier,
}

impl serde::Serialize for PluginKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.interface())
    }
}

/// Why a plugin call produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// The file is not a loadable component of a known world and version.
    Load(String),
    /// The plugin rejected the params.
    InvalidParams(String),
    /// The plugin returned an error instead of decisions.
    Rejected(String),
    /// The call ran past the deadline.
    Timeout(Duration),
    /// The plugin tried to grow memory past its cap.
    MemoryExhausted(usize),
    /// The fuel budget ran out.
    FuelExhausted(u64),
    /// The plugin panicked (message from its stderr).
    Panic(String),
    /// Any other trap.
    Trap(String),
    /// The answer broke the contract (wrong length, index out of range, ...).
    InvalidAnswer(String),
}

/// A plugin call that produced no answer, naming the plugin and the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The plugin's name, or its file when it never loaded.
    pub plugin: String,
    pub cause: FailureCause,
    /// What the plugin wrote to stderr during the call, if anything (bounded).
    pub stderr: Option<String>,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything but the host's own wording may come from the plugin: escaped, so that
        // it cannot forge terminal output or log lines (`crate::untrusted`).
        use crate::untrusted::{escape, escape_lines};
        write!(f, "plugin {}: ", escape(&self.plugin))?;
        match &self.cause {
            FailureCause::Load(m) => write!(f, "cannot load: {}", escape(m))?,
            FailureCause::InvalidParams(m) => write!(f, "invalid params: {}", escape(m))?,
            FailureCause::Rejected(m) => write!(f, "could not decide: {}", escape(m))?,
            FailureCause::Timeout(d) => {
                write!(f, "timed out after {d:?} (raise the policy's `timeout`, or `--timeout`, if it legitimately needs longer)")?
            }
            FailureCause::MemoryExhausted(cap) => write!(
                f,
                "exceeded its memory cap of {} (raise the policy's `memory_mib`, or `--memory-mib`, if the input is that large)",
                crate::input::bytes(*cap as u64)
            )?,
            FailureCause::FuelExhausted(fuel) => write!(
                f,
                "ran out of fuel: it used its whole budget of {fuel} units (about one per WebAssembly instruction); \
                 raise the policy's `fuel` if it legitimately needs more, or leave `fuel` out and rely on `timeout`"
            )?,
            FailureCause::Panic(m) => write!(f, "panicked {}", escape(m))?,
            FailureCause::Trap(m) => write!(f, "trapped: {}", escape(m))?,
            FailureCause::InvalidAnswer(m) => write!(f, "returned an invalid answer: {}", escape(m))?,
        }
        if let Some(stderr) = self.stderr.as_deref().filter(|s| !s.is_empty()) {
            // Panic messages already are the stderr.
            if !matches!(self.cause, FailureCause::Panic(_)) {
                write!(f, "\n  plugin stderr: {}", escape_lines(stderr, "    "))?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for PluginError {}

/// The process-wide plugin runtime.
pub struct PluginRuntime {
    /// Cranelift: the code plugins normally run.
    optimizing: Compiler,
    /// Winch, when `RuntimeConfig::tiered_compilation` is on and this target has it.
    baseline: Option<Compiler>,
    config: RuntimeConfig,
    /// Compiled functions of the components compiled so far (`RuntimeConfig::function_cache_bytes`).
    function_cache: Option<Arc<function_cache::FunctionCache>>,
    /// Tier-ups and function cache warm-ups ([`background`]).
    background: Arc<background::Background>,
    ticker_stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
    /// Instances currently kept warm (or in use after being warm): see [`WarmPermit`].
    warm_instances: AtomicU32,
}

/// One compiler's engine and the linker for its components.
struct Compiler {
    engine: Engine,
    linker: Linker<SandboxState>,
}

impl Compiler {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let engine = Engine::new(config).map_err(|e| anyhow::anyhow!("{e:#}")).context("cannot create the WebAssembly engine")?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Clock waits and polls that never block the thread (see `virtual_time`).
        virtual_time::add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("{e}"))?;
        // `log` (and `types`, which holds only types) at every accepted version: a 0.1
        // plugin imports `log@0.1.0`, a 0.2 plugin `log@0.2.x`, and all reach one logger.
        // (wasmtime resolves an import of `@0.2.0` to the `@0.2.1` defined here: semver.)
        for version in ACCEPTED_CONTRACTS {
            linker.instance(&format!("{CONTRACT_PACKAGE}/types@{version}")).map_err(|e| anyhow::anyhow!("{e}"))?;
            linker
                .instance(&format!("{CONTRACT_PACKAGE}/log@{version}"))
                .and_then(|mut log| {
                    log.func_wrap("log", |mut cx: StoreContextMut<'_, SandboxState>, (level, message): (wire::LogLevel, String)| {
                        cx.data_mut().log(level, message);
                        Ok(())
                    })
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        // 0.2.1: name matching in the host, for retention plugins that import it.
        names::add_to_linker(&mut linker, CONTRACT_VERSION).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Compiler { engine, linker })
    }
}

/// Which compiler produced the code a plugin's calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Winch's single-pass code, served while Cranelift compiles
    /// (`RuntimeConfig::tiered_compilation`).
    Baseline,
    /// Cranelift's code.
    Optimized,
}

impl Tier {
    /// `baseline` or `optimized`, as the API and `plugins list` show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Baseline => "baseline",
            Tier::Optimized => "optimized",
        }
    }
}

impl PluginRuntime {
    /// Creates the engine, the linker and the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        // Slots for evaluations in fresh stores plus those kept warm.
        let slots = config.max_concurrent_evaluations + config.max_warm_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            // A Rust component is several core instances (main module and shims).
            .total_core_instances(slots * 8)
            .total_memories(slots * 2)
            .total_tables(slots * 8)
            .max_memory_size(config.max_memory_bytes)
            // Returning a slot's memory to the kernel after every call was ~40% of a
            // small evaluation; see `RuntimeConfig::keep_resident_bytes`.
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        // What both compilers share: the component model, deadlines, fuel.
        let common = || {
            let mut wasm = Config::new();
            wasm.wasm_component_model(true).epoch_interruption(true).consume_fuel(config.fuel);
            // For profiling plugins: `perf` reads guest function names from /tmp/perf-<pid>.map.
            if std::env::var_os("TAGWARDEN_PERFMAP").is_some() {
                wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            wasm
        };
        let mut wasm = common();
        wasm.strategy(Strategy::Cranelift).allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let function_cache =
            (config.function_cache_bytes > 0).then(|| Arc::new(function_cache::FunctionCache::new(config.function_cache_bytes)));
        if let Some(cache) = &function_cache {
            wasm.enable_incremental_compilation(cache.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let optimizing = Compiler::new(&wasm)?;
        let baseline = if config.tiered_compilation && cfg!(target_arch = "x86_64") {
            // Baseline code serves for seconds, so it takes the on-demand allocator rather
            // than a second pool of slots; the memory cap is the store's limiter either way.
            let mut wasm = common();
            wasm.strategy(Strategy::Winch).allocation_strategy(InstanceAllocationStrategy::OnDemand);
            match Compiler::new(&wasm) {
                Ok(compiler) => Some(compiler),
                Err(e) => {
                    // Only the first load of a new plugin is slower: say so and go on.
                    tracing::warn!("plugins will be compiled with the optimizing compiler only: {e:#}");
                    None
                }
            }
        } else {
            None
        };

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engines: Vec<_> = std::iter::once(&optimizing).chain(&baseline).map(|c| c.engine.weak()).collect();
            let stop = ticker_stop.clone();
            std::thread::Builder::new().name("tagwarden-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    for engine in &engines {
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => return,
                        }
                    }
                }
            })?
        };
        Ok(PluginRuntime {
            optimizing,
            baseline,
            config,
            function_cache,
            background: Arc::default(),
            ticker_stop,
            ticker: Some(ticker),
            warm_instances: AtomicU32::new(0),
        })
    }

    /// What the in-memory cache of compiled functions did since the runtime started.
    pub fn function_cache_stats(&self) -> FunctionCacheStats {
        self.function_cache.as_ref().map(|c| c.stats()).unwrap_or_default()
    }

    /// Waits until the background compiles queued so far (tier-ups and function cache
    /// warm-ups) are done; returns how many ran since the runtime started (0 when
    /// `RuntimeConfig::tiered_compilation` and `warm_function_cache` are off).
    pub fn wait_for_background_compiles(&self) -> u64 {
        self.background.wait_idle()
    }

    /// Holds background compiles back (queued jobs wait) until the guard is dropped: for
    /// tests of what baseline code does, which a tier-up would otherwise race.
    pub fn hold_background_compiles(&self) -> impl Drop + use<> {
        self.background.hold()
    }

    /// Claims one of the slots set aside for warm instances, if one is free.
    fn warm_permit(self: &Arc<Self>) -> Option<WarmPermit> {
        let max = self.config.max_warm_instances;
        self.warm_instances.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(WarmPermit(self.clone()))
    }

    /// Loads a plugin file with default limits. See [`PluginRuntime::load_bytes`].
    pub fn load_file(self: &Arc<Self>, path: &Path, limits: PluginLimits) -> Result<Plugin, PluginError> {
        let bytes = crate::input::read_bytes(path, "plugin file", crate::input::limits::PLUGIN_BYTES, "").map_err(|e| PluginError {
            plugin: path.display().to_string(),
            cause: FailureCause::Load(e.to_string()),
            stderr: None,
        })?;
        self.load_bytes(&path.display().to_string(), &bytes, limits)
    }

    /// Compiles and validates a component: it must be a component (not a core module),
    /// export exactly one of the three plugin interfaces at a version this host speaks,
    /// import nothing the host does not provide, and answer `info`.
    pub fn load_bytes(self: &Arc<Self>, origin: &str, bytes: &[u8], limits: PluginLimits) -> Result<Plugin, PluginError> {
        let load_err = |m: String| PluginError { plugin: origin.to_owned(), cause: FailureCause::Load(m), stderr: None };
        check_binary_header(bytes).map_err(load_err)?;
        let sha256 = crate::model::sha256_hex(bytes);
        let (component, tier, from_compile_cache) = self.compile(&sha256, bytes).map_err(|e| {
            load_err(format!("not a valid WebAssembly component ({} bytes; a truncated copy? build or copy it again): {e:#}", bytes.len()))
        })?;
        let (kind, contract_version) = Self::exported_world(&component).map_err(load_err)?;
        let code = self.code(&component, tier, kind, contract_version).map_err(load_err)?;

        let mut plugin = Plugin {
            inner: Arc::new(PluginInner {
                runtime: self.clone(),
                meta: PluginMeta {
                    name: origin.to_owned(),
                    version: String::new(),
                    description: String::new(),
                    kind,
                    contract_version: contract_version.to_string(),
                    sha256,
                    size_bytes: bytes.len(),
                    from_compile_cache,
                    loaded_tier: tier,
                },
                name: Arc::from(origin),
                limits,
                code: Arc::new(CodeCell(RwLock::new(Arc::new(code)))),
                stats: PluginStats::default(),
            }),
        };
        let info = plugin.call(crate::model::Timestamp::from_unix_micros(0), |store, pre| {
            let instance = pre.instance.instantiate(&mut *store)?;
            // Every function's type, checked once here: a mismatch is a load error.
            if let Err(e) = pre.exports.check(store, &instance) {
                return Ok(Err(FailureCause::Load(format!(
                    "exports `{CONTRACT_PACKAGE}/{kind}@{contract_version}` with the wrong shape: {e:#}"
                ))));
            }
            Ok(Ok(pre.exports.info(store, &instance)?.call(&mut *store, ())?.0))
        })?;
        check_info(&info).map_err(|m| load_err(format!("its `info` {m}")))?;
        let inner = Arc::get_mut(&mut plugin.inner).expect("not shared yet");
        inner.name = Arc::from(info.name.as_str());
        inner.meta.name = info.name;
        inner.meta.version = info.version;
        inner.meta.description = info.description;
        match tier {
            Tier::Baseline => self.tier_up(&plugin, bytes),
            Tier::Optimized if from_compile_cache && self.config.warm_function_cache && self.function_cache.is_some() => {
                let engine = self.optimizing.engine.clone();
                let bytes = bytes.to_vec();
                // The component loaded already; an error here (none is expected) costs only
                // the warm-up.
                let job = Box::new(move || {
                    if let Err(e) = Component::new(&engine, &bytes) {
                        tracing::debug!("function cache warm-up: {e}");
                    }
                });
                self.background.queue_once(format!("warm {}", plugin.meta().sha256), job);
            }
            Tier::Optimized => {}
        }
        Ok(plugin)
    }

    /// The component of `bytes` (whose sha256 is `sha256`) and its tier: from the compile
    /// cache if it holds it (the optimizing compiler's code first, else the baseline
    /// compiler's, which a daemon stopped before its tier-up left there); else compiled now
    /// by the baseline compiler if tiered compilation is on, else by the optimizing one
    /// (and cached). The flag says whether it came from the compile cache.
    fn compile(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<(Component, Tier, bool)> {
        let cache = self.config.compile_cache.as_deref();
        if let Some(dir) = cache {
            if let Some(component) = compile_cache::load(&self.optimizing.engine, dir, sha256) {
                return Ok((component, Tier::Optimized, true));
            }
            if let Some(component) = self.baseline.as_ref().and_then(|b| compile_cache::load(&b.engine, dir, sha256)) {
                return Ok((component, Tier::Baseline, true));
            }
        }
        if let Some(baseline) = &self.baseline {
            match Component::new(&baseline.engine, bytes) {
                Ok(component) => {
                    if let Some(dir) = cache {
                        compile_cache::insert(&baseline.engine, dir, sha256, &component);
                    }
                    return Ok((component, Tier::Baseline, false));
                }
                // Cranelift compiles what Winch cannot (a proposal it lacks) and gives the
                // error for what is not a valid component.
                Err(e) => tracing::debug!("the baseline compiler refused a plugin; compiling it optimized: {e:#}"),
            }
        }
        Ok((self.compile_optimized(sha256, bytes)?, Tier::Optimized, false))
    }

    /// Compiles `bytes` with the optimizing compiler and stores the result in the compile
    /// cache.
    fn compile_optimized(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let component = Component::new(&self.optimizing.engine, bytes)?;
        if let Some(dir) = &self.config.compile_cache {
            compile_cache::insert(&self.optimizing.engine, dir, sha256, &component);
        }
        Ok(component)
    }

    /// `component` (compiled at `tier`) pre-instantiated, with its interface's functions.
    fn code(&self, component: &Component, tier: Tier, kind: PluginKind, contract_version: ContractVersion) -> Result<Code, String> {
        let compiler = match tier {
            Tier::Baseline => self.baseline.as_ref().expect("baseline code comes from the baseline compiler"),
            Tier::Optimized => &self.optimizing,
        };
        let instance = compiler.linker.instantiate_pre(component).map_err(|e| {
            format!(
                "{e} (plugins may import only the tagwarden:policy/log interface and the WASI interfaces the Rust standard library needs; \
                 they get no network, filesystem or environment)"
            )
        })?;
        let exports = wire::Exports::find(component, kind, contract_version)
            .map_err(|e| format!("exports `{CONTRACT_PACKAGE}/{kind}@{contract_version}` with the wrong shape: {e}"))?;
        Ok(Code { pre: TypedPre { instance, exports }, tier })
    }

    /// Queues the optimizing compile of `plugin` (loaded at the baseline tier from `bytes`);
    /// when it is done, calls that start from then on run the optimized code. Nothing is
    /// compiled if every copy of the plugin was dropped by then (a newer version replaced it).
    fn tier_up(self: &Arc<Self>, plugin: &Plugin, bytes: &[u8]) {
        let (runtime, cell) = (Arc::downgrade(self), Arc::downgrade(&plugin.inner.code));
        let meta = plugin.meta();
        let (name, sha256, kind, version) = (meta.name.clone(), meta.sha256.clone(), meta.kind, plugin.current_code().pre.exports.version);
        let bytes = bytes.to_vec();
        self.background.queue(Box::new(move || {
            let Some(runtime) = runtime.upgrade().filter(|_| cell.strong_count() > 0) else { return };
            let started = std::time::Instant::now();
            // Another load of the same bytes (the daemon's backoff plugin is loaded by the
            // configuration and by the directory) may have tiered up first.
            let cached = runtime.config.compile_cache.as_deref().and_then(|dir| compile_cache::load(&runtime.optimizing.engine, dir, &sha256));
            let code = cached
                .map_or_else(|| runtime.compile_optimized(&sha256, &bytes), Ok)
                .map_err(|e| format!("{e:#}"))
                .and_then(|component| runtime.code(&component, Tier::Optimized, kind, version));
            match (code, cell.upgrade()) {
                (Ok(code), Some(cell)) => {
                    *cell.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(code);
                    tracing::info!(plugin = %name, "optimized code in service (compiled in {} ms in the background)", started.elapsed().as_millis());
                }
                (Ok(_), None) => {}
                // Baseline code is slower, not wrong: the plugin keeps serving with it.
                (Err(e), _) => tracing::warn!(plugin = %name, "keeps its baseline code: the optimizing compiler failed: {e}"),
            }
        }));
    }

    /// Finds which plugin interface the component exports and checks its version.
    fn exported_world(component: &Component) -> Result<(PluginKind, ContractVersion), String> {
        let ty = component.component_type();
        let engine = component.engine();
        let mut found = Vec::new();
        for (name, item) in ty.exports(engine) {
            if !matches!(item.ty, ComponentItem::ComponentInstance(_)) {
                continue;
            }
            let Some(rest) = name.strip_prefix(CONTRACT_PACKAGE).and_then(|r| r.strip_prefix('/')) else { continue };
            let (iface, version) = rest.split_once('@').unwrap_or((rest, ""));
            let kind = match iface {
                "retention" => PluginKind::Retention,
                "backoff" => PluginKind::Backoff,
                "stale" => PluginKind::Stale,
                _ => continue,
            };
            found.push((kind, version.to_owned()));
        }
        let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
        match found.as_slice() {
            [] => Err(format!(
                "exports none of {CONTRACT_PACKAGE}/retention, /backoff or /stale (it exports: {}); build it with the tagwarden plugin SDK",
                if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") }
            )),
            [(kind, version)] => Ok((*kind, check_contract_version(version)?)),
            _ => Err("exports more than one plugin interface; a plugin implements exactly one world".to_owned()),
        }
    }
}

/// A claim on one of the pool slots set aside for instances kept warm between calls
/// ([`RuntimeConfig::max_warm_instances`]): warm instances can never starve the slots
/// that fresh evaluations need. Released when dropped, with the instance it covers.
struct WarmPermit(Arc<PluginRuntime>);

impl Drop for WarmPermit {
    fn drop(&mut self) {
        self.0.warm_instances.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

/// The accepted version a plugin built for `version` is served as. Semver per accepted
/// version: same major, and for 0.x the same minor; a plugin built for a newer patch (or,
/// past 1.0, a newer minor) than the host lists may use features the host lacks.
fn check_contract_version(version: &str) -> Result<ContractVersion, String> {
    let accepted = accepted_contracts();
    let Some(parsed) = ContractVersion::parse(version) else {
        return Err(format!("exports contract version `{version}`, which is not semver; this host accepts {accepted}"));
    };
    // The plugin's own version names its exports; the accepted one only vouches for it.
    ACCEPTED_CONTRACTS.iter().any(|host| host.accepts(parsed)).then_some(parsed).ok_or_else(|| {
        format!(
            "was built for {CONTRACT_PACKAGE}@{version}, but this host accepts {accepted}; \
             rebuild the plugin against tagwarden-plugin-sdk {}.{} (contract {CONTRACT_VERSION}), or use a tagwarden that accepts {version}",
            CONTRACT_VERSION.major, CONTRACT_VERSION.minor
        )
    })
}

/// `tagwarden:policy@0.1.x (up to 0.1.0) and @0.2.x (up to 0.2.1)`, for messages.
pub fn accepted_contracts() -> String {
    let each: Vec<String> = ACCEPTED_CONTRACTS.iter().map(|v| format!("@{}.{}.x (up to {v})", v.major, v.minor)).collect();
    format!("{CONTRACT_PACKAGE}{}", each.join(" and "))
}

/// Longest plugin name and version accepted from `info`.
const INFO_NAME_BYTES: usize = 64;
/// Longest plugin description accepted from `info`.
const INFO_DESCRIPTION_BYTES: usize = 1024;

/// A plugin's name and version appear in every log line, error and audit row about it,
/// so they are short identifiers that need no escaping anywhere; the description is
/// bounded and escaped where shown.
fn check_info(info: &wire::PluginInfo) -> Result<(), String> {
    let identifier = |what: &str, value: &str, allowed: &dyn Fn(char) -> bool| {
        if value.is_empty() || value.len() > INFO_NAME_BYTES || !value.chars().all(allowed) {
            Err(format!(
                "{what} `{}` is not 1 to {INFO_NAME_BYTES} {}; the SDK fills it in from the plugin's Cargo.toml",
                crate::untrusted::escape(&value.chars().take(INFO_NAME_BYTES).collect::<String>()),
                if what == "name" { "ASCII letters, digits, `-`, `_` or `.`" } else { "printable ASCII characters" }
            ))
        } else {
            Ok(())
        }
    };
    identifier("name", &info.name, &|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))?;
    identifier("version", &info.version, &|c| c.is_ascii_graphic())?;
    if info.description.len() > INFO_DESCRIPTION_BYTES {
        return Err(format!("description is {} bytes; at most {INFO_DESCRIPTION_BYTES} are allowed", info.description.len()));
    }
    Ok(())
}

/// Distinguishes a core module or a non-wasm file before handing it to the compiler,
/// so the error tells the operator what they actually have.
fn check_binary_header(bytes: &[u8]) -> Result<(), String> {
    match bytes {
        [0x00, b'a', b's', b'm', 0x01, 0x00, 0x00, 0x00, ..] => {
            Err("is a core WebAssembly module, not a component; build plugins with `--target wasm32-wasip2`".into())
        }
        [0x00, b'a', b's', b'm', ..] => Ok(()),
        _ => Err(format!(
            "is not a WebAssembly file (it starts with {:02x?}; a plugin is a `.wasm` component built with `--target wasm32-wasip2`)",
            &bytes[..bytes.len().min(4)]
        )),
    }
}

/// The pre-instantiated component and the functions of its interface.
#[derive(Clone)]
struct TypedPre {
    instance: InstancePre<SandboxState>,
    exports: wire::Exports,
}

/// A plugin's code at one tier, ready to instantiate.
struct Code {
    pre: TypedPre,
    tier: Tier,
}

/// The code a plugin's calls start with: baseline code until its optimized code replaces
/// it (once, from the background). A call keeps the code it started with; so does an
/// instance kept warm, until it is dropped for one of the current code.
struct CodeCell(RwLock<Arc<Code>>);

struct PluginInner {
    runtime: Arc<PluginRuntime>,
    meta: PluginMeta,
    /// The name used in logs and errors.
    name: Arc<str>,
    limits: PluginLimits,
    /// Shared by every copy of the plugin with other limits ([`Plugin::with_limits`]).
    code: Arc<CodeCell>,
    stats: PluginStats,
}

/// What one loaded plugin's evaluations did since it was loaded: what `plugins list`
/// shows and what quarantine counts.
#[derive(Default)]
struct PluginStats {
    evaluations: AtomicU64,
    failures: AtomicU64,
    /// Traps, timeouts and memory or fuel exhaustion since the last clean answer.
    consecutive_faults: AtomicU32,
    last_fault: Mutex<Option<String>>,
}

/// A snapshot of a plugin's [`Plugin::call_counts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub evaluations: u64,
    pub failures: u64,
    /// Traps, timeouts, memory or fuel exhaustion in a row (a clean answer resets it;
    /// params the plugin rejects or an invalid answer neither count nor reset).
    pub consecutive_faults: u32,
    /// The last of those faults, as its error reads.
    pub last_fault: Option<String>,
}

impl FailureCause {
    /// Whether this is the plugin misbehaving at run time (what quarantine counts), as
    /// opposed to an answer about its input.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            FailureCause::Timeout(_)
                | FailureCause::MemoryExhausted(_)
                | FailureCause::FuelExhausted(_)
                | FailureCause::Panic(_)
                | FailureCause::Trap(_)
        )
    }
}

/// A loaded, validated plugin. Cheap to clone; immutable; safe to share across threads.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("meta", &self.inner.meta).finish()
    }
}

impl Plugin {
    pub fn meta(&self) -> &PluginMeta {
        &self.inner.meta
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.inner.limits
    }

    /// Evaluations and failures of this loaded plugin (this version, these limits).
    pub fn call_counts(&self) -> CallCounts {
        let s = &self.inner.stats;
        CallCounts {
            evaluations: s.evaluations.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            consecutive_faults: s.consecutive_faults.load(Ordering::Relaxed),
            last_fault: s.last_fault.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Forgets the faults in a row (an operator released the plugin from quarantine).
    pub fn clear_faults(&self) {
        self.inner.stats.consecutive_faults.store(0, Ordering::Relaxed);
    }

    /// Counts one evaluation and how it ended.
    fn record_evaluation(&self, error: Option<&PluginError>) {
        let s = &self.inner.stats;
        s.evaluations.fetch_add(1, Ordering::Relaxed);
        match error {
            None => s.consecutive_faults.store(0, Ordering::Relaxed),
            Some(e) => {
                s.failures.fetch_add(1, Ordering::Relaxed);
                if e.cause.is_fault() {
                    s.consecutive_faults.fetch_add(1, Ordering::Relaxed);
                    *s.last_fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.to_string());
                }
            }
        }
    }

    /// The same plugin with other limits (the compiled code is shared).
    pub fn with_limits(&self, limits: PluginLimits) -> Plugin {
        let i = &self.inner;
        Plugin {
            inner: Arc::new(PluginInner {
                runtime: i.runtime.clone(),
                meta: i.meta.clone(),
                name: i.name.clone(),
                limits,
                code: i.code.clone(),
                stats: PluginStats::default(),
            }),
        }
    }

    /// Which compiler's code the plugin's calls start with now.
    pub fn tier(&self) -> Tier {
        self.current_code().tier
    }

    fn current_code(&self) -> Arc<Code> {
        self.inner.code.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// This plugin as a retention plugin, or an error naming what it is instead.
    pub fn into_retention(self) -> Result<RetentionPlugin, PluginError> {
        self.expect_kind(PluginKind::Retention).map(RetentionPlugin::new)
    }

    pub fn into_backoff(self) -> Result<BackoffPlugin, PluginError> {
        self.expect_kind(PluginKind::Backoff).map(BackoffPlugin::new)
    }

    pub fn into_stale(self) -> Result<StalePlugin, PluginError> {
        self.expect_kind(PluginKind::Stale).map(StalePlugin::new)
    }

    fn expect_kind(self, want: PluginKind) -> Result<Self, PluginError> {
        let have = self.inner.meta.kind;
        if have == want {
            Ok(self)
        } else {
            Err(self.error(FailureCause::Load(format!("is a {have} plugin, but a {want} plugin is needed here")), None))
        }
    }

    /// A reason in a backoff or stale answer is bounded like a retention rule's.
    fn check_reason(&self, reason: &str) -> Result<(), PluginError> {
        let max = crate::model::MAX_REASON_BYTES;
        if reason.len() > max {
            let m = format!("its reason is {} bytes long; at most {max} are allowed", reason.len());
            return Err(self.error(FailureCause::InvalidAnswer(m), None));
        }
        Ok(())
    }

    fn error(&self, cause: FailureCause, stderr: Option<String>) -> PluginError {
        PluginError { plugin: self.inner.name.to_string(), cause, stderr }
    }

    /// A fresh store for this plugin's current code, with its memory cap, and that code.
    fn new_store(&self) -> (Store<SandboxState>, Arc<Code>) {
        let code = self.current_code();
        (sandbox::new_store(code.pre.instance.engine(), &self.inner.name, &self.inner.limits), code)
    }

    /// Runs `f` in a fresh store. See [`Plugin::call_in`].
    fn call<R>(
        &self,
        now: crate::model::Timestamp,
        f: impl FnOnce(&mut Store<SandboxState>, &TypedPre) -> wasmtime::Result<Result<R, FailureCause>>,
    ) -> Result<R, PluginError> {
        let (mut store, code) = self.new_store();
        self.call_in(&mut store, &code, now, f)
    }

    /// Runs `f` in `store` (made for `code`) as one call — its own deadline, fuel, clock
    /// at `now`, random from the seed — and turns every way it can fail (a trap, or an
    /// error the plugin answered with: `Ok(Err(cause))`) into a [`PluginError`] that
    /// carries the plugin's stderr. After a trap the store's instance must not be used again.
    fn call_in<R>(
        &self,
        store: &mut Store<SandboxState>,
        code: &Code,
        now: crate::model::Timestamp,
        f: impl FnOnce(&mut Store<SandboxState>, &TypedPre) -> wasmtime::Result<Result<R, FailureCause>>,
    ) -> Result<R, PluginError> {
        let i = &self.inner;
        store.data_mut().begin_call(now);
        sandbox::arm(store, &i.limits, i.runtime.config.fuel);
        match off_async_worker(|| f(store, &code.pre)) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(cause)) => Err(self.error(cause, Some(store.data().stderr()))),
            Err(e) => {
                let stderr = store.data().stderr();
                let cause = self.classify(store, &e, &stderr);
                Err(self.error(cause, Some(stderr)))
            }
        }
    }

    fn classify(&self, store: &Store<SandboxState>, e: &wasmtime::Error, stderr: &str) -> FailureCause {
        let limits = &self.inner.limits;
        if store.data().memory.exceeded {
            return FailureCause::MemoryExhausted(limits.memory_bytes);
        }
        let trap = e.downcast_ref::<Trap>();
        match trap {
            Some(Trap::Interrupt) => return FailureCause::Timeout(limits.timeout),
            Some(Trap::OutOfFuel) => return FailureCause::FuelExhausted(limits.fuel.unwrap_or(0)),
            _ => {}
        }
        // Rust guests print `panicked at <location>:\n<message>` and then trap; the SDK's
        // hook says which call: `panicked in `evaluate` at <location>:\n<message>`.
        if let Some(at) = stderr.find("panicked at ").or_else(|| stderr.find("panicked in `")) {
            return FailureCause::Panic(panic_message(&stderr[at + "panicked ".len()..]));
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return FailureCause::Trap(format!(
                "called exit({}); a plugin must return its answer, or an error saying what is wrong, instead of exiting",
                exit.0
            ));
        }
        // The trap itself, not the backtrace wasmtime wraps it in.
        FailureCause::Trap(match trap {
            Some(Trap::StackOverflow) => "stack overflow: recursion too deep or unbounded".to_owned(),
            Some(Trap::UnreachableCodeReached) => {
                "aborted (`std::process::abort`, or another path to wasm's `unreachable` instruction)".to_owned()
            }
            Some(other) => other.to_string(),
            None => e.root_cause().to_string(),
        })
    }
}

/// The gist of a guest's panic output after `panicked `: the location line and the
/// message, without std's `RUST_BACKTRACE` advice (a plugin has no environment to set).
fn panic_message(text: &str) -> String {
    text.lines().filter(|line| !line.starts_with("note: run with `RUST_BACKTRACE")).take(3).collect::<Vec<_>>().join(" ")
}

/// Runs a plugin call so that it can block. WASI's blocking calls (a guest flushing stderr,
/// as a Rust panic does, or polling) `block_on` the current tokio runtime, and that panics
/// — taking the daemon down with it — on a thread that drives async tasks, where the daemon
/// makes its backoff and stale decisions. There the thread first hands its tasks to another
/// (`block_in_place`); on a blocking thread (where passes evaluate) or outside any runtime
/// the call just runs.
fn off_async_worker<R>(call: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(call),
        // A current-thread runtime cannot hand its tasks over: callers there run plugins
        // in `spawn_blocking` (no such caller today).
        _ => call(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_keep_the_call_and_drop_backtrace_advice() {
        let std_hook = "src/lib.rs:3:5:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(std_hook), "src/lib.rs:3:5: boom");
        assert_eq!(panic_message("in `evaluate` at src/lib.rs:3:5:\nboom\n"), "in `evaluate` at src/lib.rs:3:5: boom");
    }

    #[test]
    fn contract_versions_follow_semver_per_accepted_version() {
        let v = |s| ContractVersion::parse(s).unwrap();
        assert_eq!(check_contract_version("0.1.0"), Ok(v("0.1.0")));
        assert_eq!(check_contract_version("0.2.0"), Ok(v("0.2.0")));
        assert_eq!(check_contract_version("0.2.1"), Ok(v("0.2.1")));
        let err = check_contract_version("0.3.0").unwrap_err();
        assert!(err.contains("built for tagwarden:policy@0.3.0") && err.contains("@0.1.x (up to 0.1.0) and @0.2.x (up to 0.2.1)"), "{err}");
        assert!(check_contract_version("1.0.0").is_err());
        assert!(check_contract_version("0.1.1").is_err(), "a newer patch may rely on additions");
        assert!(check_contract_version("0.2.2").is_err(), "a newer patch may rely on additions");
        assert!(check_contract_version("banana").unwrap_err().contains("not semver"));
        assert!(check_contract_version("0.2.0.1").unwrap_err().contains("not semver"));
    }

    #[test]
    fn binary_header_tells_module_from_component_from_junk() {
        assert!(check_binary_header(b"\0asm\x01\0\0\0").unwrap_err().contains("core WebAssembly module"));
        assert!(check_binary_header(b"\0asm\x0d\0\x01\0").is_ok());
        assert!(check_binary_header(b"#!/bin/sh").unwrap_err().contains("not a WebAssembly file"));
        assert!(check_binary_header(b"").unwrap_err().contains("not a WebAssembly file"));
    }

    #[test]
    fn deadlines_round_up_to_ticks() {
        let l = PluginLimits { timeout: Duration::from_millis(1), ..Default::default() };
        assert_eq!(l.deadline_ticks(), 2);
        let l = PluginLimits { timeout: Duration::from_secs(1), ..Default::default() };
        assert_eq!(l.deadline_ticks(), 201);
    }
}
