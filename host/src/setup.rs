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

/// The daemon's policies, replaced as a whole when the plugin directory swaps a version in
/// or pauses a policy. A pass holds the `Arc` it started with, and with it the plugin
/// version it started on; the next claim sees the new set.
pub struct PolicySet(std::sync::RwLock<Arc<Vec<BoundPolicy>>>);

impl PolicySet {
    pub fn new(policies: Vec<BoundPolicy>) -> Arc<Self> {
        Arc::new(PolicySet(std::sync::RwLock::new(Arc::new(policies))))
    }

    /// The policies in force now.
    pub fn current(&self) -> Arc<Vec<BoundPolicy>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Puts `policies` in force (one pointer swap under the lock).
    pub fn replace(&self, policies: Vec<BoundPolicy>) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policies);
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
/// JSON. Its params are validated here with a trial check, so a typo fails at start.
pub fn load_stale(config: &Config, runtime: &Arc<PluginRuntime>) -> anyhow::Result<(StalePlugin, String)> {
    let spec = config.plugins.stale.as_deref().unwrap_or("stale-timeout");
    let context = || format!("cannot load the stale plugin `{spec}` of {} (`plugins.stale`)", config.path.display());
    let path = resolve_plugin(config, spec).with_context(context)?;
    let plugin = runtime.load_file(&path, PluginLimits::default()).with_context(context)?.into_stale().with_context(context)?;
    let params = serde_json::to_string(&config.plugins.stale_params)?;
    let now = Timestamp::now();
    let trial = Operation {
        kind: OperationKind::Cleanup,
        state: "cleanup_ongoing".into(),
        started_at: Some(now),
        now,
        delete_timeout: config.deletion.timeout,
        registry_status: None,
    };
    plugin.check(&params, &trial).with_context(|| format!("{}: `plugins.stale_params`", context()))?;
    Ok((plugin, params))
}

/// The configured backoff plugin (`[plugins] backoff`) and its params as JSON, if any. Its
/// params are validated here, so a typo fails at start, not at the first failure.
pub fn load_backoff(config: &Config, runtime: &Arc<PluginRuntime>) -> anyhow::Result<Option<(BackoffPlugin, String)>> {
    let Some(spec) = &config.plugins.backoff else { return Ok(None) };
    let context = || format!("cannot load the backoff plugin `{spec}` of {} (`plugins.backoff`)", config.path.display());
    let path = resolve_plugin(config, spec).with_context(context)?;
    let plugin = runtime.load_file(&path, PluginLimits::default()).with_context(context)?.into_backoff().with_context(context)?;
    let params = serde_json::to_string(&config.plugins.backoff_params)?;
    // A trial decision: bad params fail now, with the plugin's own words.
    let trial = Failure {
        operation: OperationKind::Cleanup,
        attempt: 1,
        class: crate::model::ErrorClass::Transient,
        http_status: Some(503),
        retry_after: None,
        message: "trial".into(),
        now: crate::model::Timestamp::now(),
        seed: 0,
    };
    plugin.decide(&params, &trial).with_context(|| format!("{}: `plugins.backoff_params`", context()))?;
    Ok(Some((plugin, params)))
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
