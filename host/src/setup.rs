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
use crate::store::Store;

/// A policy and the repositories it applies to.
pub struct BoundPolicy {
    pub policy: Policy,
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
pub fn load_policies(config: &Config, runtime: &Arc<PluginRuntime>) -> anyhow::Result<Vec<BoundPolicy>> {
    let mut out = Vec::new();
    for p in &config.policies {
        let context = || format!("cannot load policy `{}` of {}", p.name, config.path.display());
        // A plugin given as a path is relative to the config file.
        let path = resolve_plugin(config, &p.plugin).with_context(context)?;
        let plugin = runtime.load_file(&path, p.limits()).with_context(context)?.into_retention().with_context(context)?;
        let policy = Policy::new(&p.name, &plugin, &p.params_json()).with_context(context)?;
        let named = p.repositories.iter().filter(|r| !r.contains(['*', '?', '[', '{'])).cloned().collect();
        out.push(BoundPolicy { policy, cadence: p.cadence, enabled: p.enabled, matcher: p.matcher(), named });
    }
    Ok(out)
}

/// A plugin named in `[plugins]`: a bundled name, or a `.wasm` path relative to the config.
fn resolve_plugin(config: &Config, spec: &str) -> anyhow::Result<std::path::PathBuf> {
    let spec = if spec.ends_with(".wasm") || spec.contains('/') {
        config.resolve_path(Path::new(spec)).display().to_string()
    } else {
        spec.to_owned()
    };
    crate::plugins::resolve(&spec, &[])
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

/// The state database of `config` (`[state] dir`/tagwarden.db).
pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.resolve_path(&config.state.dir).join("tagwarden.db"))
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
