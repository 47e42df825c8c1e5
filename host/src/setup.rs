//! Turns a configuration into what every command runs with: policies bound to the
//! repositories they apply to, the state store, the backend, and a pass context. `run
//! --once` and the daemon build these here, so both run identical objects.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::backend::{Backend, RecordingBackend};
use crate::config::Config;
use crate::model::Timestamp;
use crate::pass::{DeletionLimits, Guards, PassContext, Policy};
use crate::registry::{RegistryClient, RegistryConfig};
use crate::runtime::{BackoffPlugin, Failure, Operation, OperationKind, PluginLimits, PluginRuntime, StalePlugin};
use crate::scheduler::Cadence;
use crate::store::{PgStateStore, StateStore, Store};

/// A policy and the repositories it applies to.
#[derive(Clone)]
pub struct BoundPolicy {
    pub policy: Policy,
    /// The plugin of `[plugins] dir` it uses (file stem), whose versions the directory
    /// swaps in; `None` for a plugin loaded once at start.
    pub watched_plugin: Option<String>,
    /// The policy's own params (JSON) and limits, to configure each new version with.
    pub params: String,
    pub limits: PluginLimits,
    /// How often the daemon runs it, and whether it runs at all.
    pub cadence: Cadence,
    pub enabled: bool,
    matcher: globset::GlobSet,
    /// Patterns without glob characters: repository paths named outright, known to the
    /// daemon even when the registry's catalog is not readable.
    pub named: Vec<String>,
}

impl BoundPolicy {
    /// Whether the policy's `repositories` patterns match `repository`.
    pub fn matches(&self, repository: &str) -> bool {
        self.matcher.is_match(repository)
    }
}

/// A value the daemon reads at each use and the plugin directory replaces as a whole. A
/// reader holds the `Arc` it took (a pass, the version it started on); the next reader sees
/// the new value.
#[derive(Debug)]
pub struct Swappable<T>(std::sync::RwLock<Arc<T>>);

impl<T> Swappable<T> {
    pub fn new(value: T) -> Arc<Self> {
        Arc::new(Swappable(std::sync::RwLock::new(Arc::new(value))))
    }

    /// The value in force now.
    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `value` in force (one pointer swap under the lock).
    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(value);
    }
}

/// The daemon's policies, replaced as a whole when the plugin directory swaps a version in
/// or pauses a policy.
pub type PolicySet = Swappable<Vec<BoundPolicy>>;

/// The daemon's backoff and stale plugins, each with its params (JSON).
#[derive(Debug, Clone, Default)]
pub struct Strategies {
    /// `None`: the host's default schedule (no `[plugins] backoff`, or the directory's
    /// backoff plugin is quarantined).
    pub backoff: Option<(BackoffPlugin, String)>,
    /// `None` only while the directory's stale plugin is quarantined: no work is judged
    /// stale then (leases still end a dead holder's work).
    pub stale: Option<(StalePlugin, String)>,
}

/// What the daemon and the import guard consult; the plugin directory swaps a new version of
/// a backoff or stale plugin of `[plugins] dir` in.
pub type StrategySet = Swappable<Strategies>;

/// Which of the daemon's strategies a plugin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyRole {
    Backoff,
    Stale,
}

impl StrategyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyRole::Backoff => "backoff",
            StrategyRole::Stale => "stale",
        }
    }
}

/// The checks a backoff or stale plugin passes before it serves, at start and for each new
/// version the plugin directory loads: a trial decision with its params, so bad params fail
/// with the plugin's own words before any real decision.
#[derive(Debug, Clone)]
pub struct StrategyChecks {
    /// The deletion budget the stale plugin is told about.
    pub delete_timeout: std::time::Duration,
    /// `[imports] timeout_per_tag`: the stale plugin must then take an `import_timeout` param.
    pub import_timeout_per_tag: Option<std::time::Duration>,
}

impl StrategyChecks {
    pub fn from_config(config: &Config) -> StrategyChecks {
        StrategyChecks { delete_timeout: config.deletion.timeout, import_timeout_per_tag: config.imports.timeout_per_tag }
    }

    /// A trial decision after a failure. Run on a copy of `plugin`, so it counts toward no
    /// evaluations or faults.
    pub fn backoff(&self, plugin: &BackoffPlugin, params: &str) -> anyhow::Result<()> {
        let trial = Failure {
            operation: OperationKind::Cleanup,
            attempt: 1,
            class: crate::model::ErrorClass::Transient,
            http_status: Some(503),
            retry_after: None,
            message: "trial".into(),
            now: Timestamp::now(),
            seed: 0,
        };
        let copy = plugin.plugin().with_limits(plugin.plugin().limits().clone()).into_backoff()?;
        copy.decide(params, &trial).context("`plugins.backoff_params`")?;
        Ok(())
    }

    /// A trial check of an ongoing cleanup (and, with `timeout_per_tag`, of a pre-import
    /// with an `import_timeout` param), on a copy of `plugin`.
    pub fn stale(&self, plugin: &StalePlugin, params: &str) -> anyhow::Result<()> {
        let copy = plugin.plugin().with_limits(plugin.plugin().limits().clone()).into_stale()?;
        let now = Timestamp::now();
        let trial = Operation {
            kind: OperationKind::Cleanup,
            state: "cleanup_ongoing".into(),
            started_at: Some(now),
            now,
            delete_timeout: self.delete_timeout,
            registry_status: None,
        };
        copy.check(params, &trial).context("`plugins.stale_params`")?;
        if let Some(rate) = self.import_timeout_per_tag {
            crate::scheduler::imports::check_import_timeout(&copy, params, rate, self.delete_timeout)?;
        }
        Ok(())
    }
}

/// The policy for `repository`: the first whose patterns match (config order).
pub fn policy_for<'a>(policies: &'a [BoundPolicy], repository: &str) -> Option<&'a Policy> {
    policies.iter().find(|p| p.matches(repository)).map(|p| &p.policy)
}

/// The policy named `name`.
pub fn policy_by_name<'a>(policies: &'a [BoundPolicy], name: &str) -> Option<&'a Policy> {
    policies.iter().find(|p| p.policy.name == name).map(|p| &p.policy)
}

/// Loads every policy's plugin and configures it with the policy's params. Everything that
/// can be wrong with the config or the plugins fails here, before the registry is contacted.
///
/// With `watched`, a policy naming a plugin of `[plugins] dir` is not loaded here: it starts
/// paused and [`crate::plugin_dir::PluginDirectory`] puts its plugin in service.
pub fn load_policies(config: &Config, runtime: &Arc<PluginRuntime>, watched: bool) -> anyhow::Result<Vec<BoundPolicy>> {
    let mut out = Vec::new();
    for p in &config.policies {
        let context = || format!("cannot load policy `{}` of {}", p.name, config.path.display());
        let watched_plugin = watched.then(|| directory_plugin(config, &p.plugin)).flatten();
        let policy = match &watched_plugin {
            Some(name) => Policy::paused(&p.name, format!("plugin `{name}` is not loaded yet")),
            None => {
                // A plugin given as a path is relative to the config file.
                let path = resolve_plugin(config, &p.plugin).with_context(context)?;
                let plugin = runtime.load_file(&path, p.limits()).with_context(context)?.into_retention().with_context(context)?;
                Policy::new(&p.name, &plugin, &p.params_json()).with_context(context)?
            }
        };
        let named = p.repositories.iter().filter(|r| !r.contains(['*', '?', '[', '{'])).cloned().collect();
        out.push(BoundPolicy {
            policy,
            watched_plugin,
            params: p.params_json(),
            limits: p.limits(),
            cadence: p.cadence,
            enabled: p.enabled,
            matcher: p.matcher(),
            named,
        });
    }
    Ok(out)
}

/// The plugin directory (`[plugins] dir`, relative to the config), if one is configured.
pub fn plugin_dir(config: &Config) -> Option<std::path::PathBuf> {
    config.plugins.dir.as_deref().map(|d| config.resolve_path(d))
}

/// The name a policy's `plugin` has in the plugin directory: a bare name (no path, no
/// `.wasm`) when `[plugins] dir` is set.
pub fn directory_plugin(config: &Config, spec: &str) -> Option<String> {
    let bare = !(spec.ends_with(".wasm") || spec.contains('/'));
    (bare && config.plugins.dir.is_some()).then(|| spec.to_owned())
}

/// A plugin named in `[plugins]` or a policy: a `.wasm` path relative to the config, else a
/// name looked up in `[plugins] dir` first, then among the bundled plugins.
fn resolve_plugin(config: &Config, spec: &str) -> anyhow::Result<std::path::PathBuf> {
    let spec = if spec.ends_with(".wasm") || spec.contains('/') {
        config.resolve_path(Path::new(spec)).display().to_string()
    } else {
        spec.to_owned()
    };
    let dirs: Vec<std::path::PathBuf> = plugin_dir(config).into_iter().collect();
    crate::plugins::resolve(&spec, &dirs)
}

/// The stale plugin (`[plugins] stale`, default the bundled `stale-timeout`) and its params as
/// JSON, with its limits (`[plugins.stale_limits]`). Its params are checked here
/// ([`StrategyChecks::stale`]), so a typo fails at start.
pub fn load_stale(config: &Config, runtime: &Arc<PluginRuntime>) -> anyhow::Result<(StalePlugin, String)> {
    let spec = config.plugins.stale.as_deref().unwrap_or("stale-timeout");
    let context = || format!("cannot load the stale plugin `{spec}` of {} (`plugins.stale`)", config.path.display());
    let path = resolve_plugin(config, spec).with_context(context)?;
    let limits = config.plugins.stale_limits.limits();
    let plugin = runtime.load_file(&path, limits).with_context(context)?.into_stale().with_context(context)?;
    let params = serde_json::to_string(&config.plugins.stale_params)?;
    StrategyChecks::from_config(config).stale(&plugin, &params).with_context(context)?;
    Ok((plugin, params))
}

/// The configured backoff plugin (`[plugins] backoff`) and its params as JSON, with its
/// limits (`[plugins.backoff_limits]`), if any. Its params are checked here
/// ([`StrategyChecks::backoff`]), so a typo fails at start, not at the first failure.
pub fn load_backoff(config: &Config, runtime: &Arc<PluginRuntime>) -> anyhow::Result<Option<(BackoffPlugin, String)>> {
    let Some(spec) = &config.plugins.backoff else { return Ok(None) };
    let context = || format!("cannot load the backoff plugin `{spec}` of {} (`plugins.backoff`)", config.path.display());
    let path = resolve_plugin(config, spec).with_context(context)?;
    let limits = config.plugins.backoff_limits.limits();
    let plugin = runtime.load_file(&path, limits).with_context(context)?.into_backoff().with_context(context)?;
    let params = serde_json::to_string(&config.plugins.backoff_params)?;
    StrategyChecks::from_config(config).backoff(&plugin, &params).with_context(context)?;
    Ok(Some((plugin, params)))
}

/// The backoff or stale plugin `[plugins] backoff`/`stale` names as a file of `[plugins]
/// dir` (a bare name whose `DIR/NAME.wasm` exists at start): `serve`'s plugin directory then
/// swaps its new versions in. A bare name without a file there is the bundled plugin, for the
/// daemon's whole life.
pub fn directory_strategy(config: &Config, role: StrategyRole) -> Option<String> {
    let spec = match role {
        StrategyRole::Backoff => config.plugins.backoff.as_deref()?,
        StrategyRole::Stale => config.plugins.stale.as_deref().unwrap_or("stale-timeout"),
    };
    let name = directory_plugin(config, spec)?;
    plugin_dir(config).is_some_and(|d| d.join(format!("{name}.wasm")).is_file()).then_some(name)
}

/// The database of `config`: the local file (`[state] dir`/tagwarden.db) and, with `[state]
/// url`, the PostgreSQL database the hosts share, which then holds the cleanup state, audit
/// log, runs and metadata cache ([`Store::share`]). PostgreSQL is connected, and its schema
/// brought up to date, before the local file is opened or created: a wrong URL or password
/// changes nothing.
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    let shared = connect_state(config)?;
    let store = open_local_store(config)?;
    Ok(match shared {
        Some(pg) => store.share(pg),
        None => store,
    })
}

/// [`open_store`] for a command that reads what a daemon or pass wrote: without `[state] url`
/// the local file must exist already, else the error says so and `missing` what to do.
pub fn open_existing_store(config: &Config, missing: &str) -> anyhow::Result<Store> {
    let db = local_store_path(config);
    if config.state.url.is_none() && !db.is_file() {
        anyhow::bail!("no state at {} yet: {missing}", db.display());
    }
    open_store(config)
}

/// The local database file of `config` alone, whatever `[state] url` says (`state migrate`
/// reads it).
pub fn open_local_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&local_store_path(config))
}

/// Where `config`'s local database file is.
pub fn local_store_path(config: &Config) -> std::path::PathBuf {
    config.resolve_path(&config.state.dir).join("tagwarden.db")
}

/// [`open_store`], and the cleanup state it holds.
pub fn open_state(config: &Config) -> anyhow::Result<(Store, Arc<dyn StateStore>)> {
    let store = open_store(config)?;
    let state = store.state();
    Ok((store, state))
}

/// The PostgreSQL database of `[state] url`, if one is configured.
pub fn connect_state(config: &Config) -> anyhow::Result<Option<PgStateStore>> {
    let Some(url) = &config.state.url else { return Ok(None) };
    let context = || format!("opening the state database of {} (`state.url`)", config.path.display());
    let password = config.state_password().with_context(context)?;
    let store = PgStateStore::connect(url, password).with_context(context)?;
    Ok(Some(store))
}

/// The registry (with the store's metadata cache) or the recordings `config` names.
pub fn backend(config: &Config, store: &Store) -> anyhow::Result<Backend> {
    let r = &config.registry;
    if let Some(dir) = &r.recordings {
        let backend = RecordingBackend::load(&config.resolve_path(dir))
            .with_context(|| format!("at `registry.recordings` of {}", config.path.display()))?;
        return Ok(Backend::Recordings(backend));
    }
    let url = url::Url::parse(r.url.as_deref().expect("validated: url or recordings"))?;
    let mut rc = RegistryConfig::new(url);
    rc.credentials = config.credentials()?;
    rc.request_timeout = r.timeout;
    rc.concurrency = r.concurrency.max(config.deletion.concurrency);
    rc.max_retries = r.max_retries;
    Ok(Backend::Oci(RegistryClient::new(rc, Some(store.metadata_cache()))?))
}

/// Everything a pass needs besides its policy, from `config`.
pub fn pass_context(config: &Config, store: &Store, dry_run: bool, now: Option<Timestamp>) -> anyhow::Result<PassContext> {
    Ok(PassContext {
        backend: backend(config, store)?,
        audit: store.audit_log(),
        runs: store.runs(),
        imports: store.imports(),
        guards: Guards::new(&config.deletion.protect, config.deletion.max_delete_fraction)?
            .deleting_orphaned_referrers(config.deletion.delete_orphaned_referrers),
        limits: DeletionLimits {
            timeout: config.deletion.timeout,
            concurrency: config.deletion.concurrency,
            max_list_size: config.deletion.max_list_size,
            keep_manifest_bytes: config.deletion.keep_manifest_bytes,
        },
        dry_run,
        now,
    })
}
