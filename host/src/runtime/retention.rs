//! Retention plugins: lower a [`TagList`]'s columns into the guest, call, validate the answer;
//! and policies configured once and kept warm across repositories.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use wasmtime::Store;
use wasmtime::component::{Component, ComponentExportIndex, ComponentType, Func, Lower, ResourceAny};

use super::bindings::retention::RetentionPlugin as Guest;
use super::bindings::retention::exports::tagwarden::policy::retention as wire;
use super::sandbox::SandboxState;
use super::{CONTRACT_PACKAGE, FailureCause, Plugin, PluginError, TypedPre, WarmPermit};
use crate::model::{self, Action, ListColumns, RetentionDecisions, Rule, TagList, Timestamp};

// The list's columns are lowered as they are: their "unknown" values must be the wire's.
const _: () = assert!(ListColumns::UNKNOWN_TIME == i64::MIN, "wit/policy.wit: an unknown timestamp is the minimum s64");
const _: () = assert!(ListColumns::UNKNOWN_SIZE == -1, "wit/policy.wit: an unknown size is -1");
const _: () = assert!(ListColumns::UNKNOWN_MEDIA_TYPE == u32::MAX, "wit/policy.wit: an unknown media type is the maximum u32");

/// The index of `[method]policy.evaluate` in a retention component, found once at load.
/// The host calls it directly rather than through the generated binding, so that the
/// input is lowered from the list's borrowed columns (`EvaluationRef`).
pub(super) fn evaluate_export(component: &Component, contract_version: &str) -> wasmtime::Result<ComponentExportIndex> {
    let interface = format!("{CONTRACT_PACKAGE}/retention@{contract_version}");
    component
        .get_export_index(None, &interface)
        .and_then(|i| component.get_export_index(Some(&i), "[method]policy.evaluate"))
        .ok_or_else(|| wasmtime::format_err!("{interface} exports no `[method]policy.evaluate`"))
}

/// Idle instances kept per configured policy: about the passes that run it at once.
const IDLE_PER_POLICY: usize = 4;

/// A loaded plugin known to implement the retention world.
#[derive(Clone, Debug)]
pub struct RetentionPlugin {
    plugin: Plugin,
}

impl RetentionPlugin {
    pub(super) fn new(plugin: Plugin) -> Self {
        RetentionPlugin { plugin }
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// Asks the plugin to validate `params` (a JSON object's text) without evaluating.
    pub fn validate_params(&self, params: &str) -> Result<(), PluginError> {
        let mut store = self.plugin.new_store();
        let (_, handle) = self.create(&mut store, params)?;
        // Dropping the store drops the policy with it; say so to the guest all the same.
        let _ = handle.resource_drop(&mut store);
        Ok(())
    }

    /// Decides every tag and untagged manifest of `list` as of `now`, in a fresh store
    /// (instantiate, `create` from `params`, evaluate). Either every position gets a
    /// verdict or the result is an error: never partial. To evaluate many repositories
    /// with the same params, [`configure`](Self::configure) once instead.
    pub fn evaluate(&self, params: &str, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let mut store = self.plugin.new_store();
        let (evaluate, handle) = self.create(&mut store, params)?;
        self.decide(&mut store, evaluate, handle, list, now)
    }

    /// Validates `params` and returns the policy they configure, ready to evaluate
    /// many repositories without parsing them or compiling its patterns again.
    pub fn configure(&self, params: &str) -> Result<ConfiguredPolicy, PluginError> {
        let policy = ConfiguredPolicy { plugin: self.clone(), params: params.to_owned(), idle: Mutex::new(Vec::new()) };
        // The instance that validated the params serves the first repository.
        let mut store = self.plugin.new_store();
        let (evaluate, handle) = self.create(&mut store, params)?;
        policy.keep_warm(Instance { store, evaluate, handle, permit: None });
        Ok(policy)
    }

    /// Instantiates the component in `store` and creates its policy from `params`.
    /// Returns the policy and the instance's `[method]policy.evaluate`.
    fn create(&self, store: &mut Store<SandboxState>, params: &str) -> Result<(Func, ResourceAny), PluginError> {
        // `create` always runs with its clock at the Unix epoch: a policy created once
        // serves evaluations at many times, and must not depend on when it was created.
        self.plugin.call_in(store, Timestamp::from_unix_micros(0), |store, pre| {
            let TypedPre::Retention(pre, evaluate) = pre else { unreachable!("kind checked at construction") };
            let instance = pre.instance_pre().instantiate(&mut *store)?;
            let guest = Guest::new(&mut *store, &instance)?;
            let evaluate = instance.get_func(&mut *store, evaluate).expect("found at load, in the same component");
            match guest.tagwarden_policy_retention().policy().call_create(&mut *store, params)? {
                Ok(handle) => Ok(Ok((evaluate, handle))),
                Err(message) => Ok(Err(FailureCause::InvalidParams(message))),
            }
        })
    }

    /// One `evaluate` call on a created policy, its answer validated against `list`.
    fn decide(
        &self,
        store: &mut Store<SandboxState>,
        evaluate: Func,
        handle: ResourceAny,
        list: &TagList,
        now: Timestamp,
    ) -> Result<RetentionDecisions, PluginError> {
        let input = EvaluationRef::new(list, now);
        let answer = self.plugin.call_in(store, now, |store, _| {
            let typed = evaluate.typed::<(ResourceAny, &EvaluationRef<'_>), (Result<wire::Decisions, String>,)>(&*store)?;
            let (answer,) = typed.call(&mut *store, (handle, &input))?;
            Ok(answer.map_err(FailureCause::Rejected))
        })?;
        let rules = answer
            .rules
            .into_iter()
            .map(|r| Rule {
                action: match r.action {
                    wire::Action::Keep => Action::Keep,
                    wire::Action::Delete => Action::Delete,
                },
                reason: r.reason,
            })
            .collect();
        RetentionDecisions::validate(list, rules, answer.tags, answer.untagged)
            .map_err(|e| self.plugin.error(FailureCause::InvalidAnswer(format!("{e:#}")), None))
    }
}

/// A retention plugin with validated params, for evaluating many repositories.
///
/// Creating a policy (parsing params, compiling patterns) can cost far more than
/// deciding a small repository (docs/benchmarks.md), so an instance that answered
/// cleanly is kept warm and the next repository reuses it. Every call still gets its
/// own deadline, its own `now` and a restarted random seed, so a plugin that follows
/// the contract (`evaluate` depends only on its input) decides exactly as in a fresh
/// store. An instance is dropped instead of kept after any failure, when it wrote to
/// stderr, when its memory grew past [`super::RuntimeConfig::max_warm_memory_bytes`],
/// or when the runtime's warm slots ([`super::RuntimeConfig::max_warm_instances`]) are
/// taken.
///
/// Safe to share between threads: concurrent evaluations take different instances.
pub struct ConfiguredPolicy {
    plugin: RetentionPlugin,
    params: String,
    idle: Mutex<Vec<Instance>>,
}

/// An instance with its policy created.
struct Instance {
    store: Store<SandboxState>,
    evaluate: Func,
    handle: ResourceAny,
    /// Held while the instance is warm.
    permit: Option<WarmPermit>,
}

impl ConfiguredPolicy {
    pub fn plugin(&self) -> &RetentionPlugin {
        &self.plugin
    }

    /// The params (JSON text) this policy was configured with.
    pub fn params(&self) -> &str {
        &self.params
    }

    /// Decides every tag and untagged manifest of `list` as of `now`, with a warm
    /// instance when one is idle. Never partial, like [`RetentionPlugin::evaluate`].
    pub fn evaluate(&self, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let started = std::time::Instant::now();
        let result = self.evaluate_warm(list, now);
        let name = &self.plugin.plugin.meta().name;
        crate::metrics::get().plugin_call(name, "retention", result.as_ref().err().map(|e| &e.cause), started.elapsed());
        self.plugin.plugin.record_evaluation(result.as_ref().err());
        result
    }

    fn evaluate_warm(&self, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => {
                let mut store = self.plugin.plugin.new_store();
                let (evaluate, handle) = self.plugin.create(&mut store, &self.params)?;
                Instance { store, evaluate, handle, permit: None }
            }
        };
        let decisions = self.plugin.decide(&mut instance.store, instance.evaluate, instance.handle, list, now);
        if decisions.is_ok() {
            self.keep_warm(instance);
        }
        decisions
    }

    /// Puts a cleanly answering instance back on the idle list, if it may stay warm.
    fn keep_warm(&self, mut instance: Instance) {
        let state = instance.store.data();
        if state.memory.size > self.plugin.plugin.inner.runtime.config.max_warm_memory_bytes || state.wrote_stderr() {
            return;
        }
        if instance.permit.is_none() {
            instance.permit = self.plugin.plugin.inner.runtime.warm_permit();
            if instance.permit.is_none() {
                return;
            }
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < IDLE_PER_POLICY {
            idle.push(instance);
        }
    }

    /// Instances kept warm right now (for tests and metrics).
    pub fn warm_instances(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl fmt::Debug for ConfiguredPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredPolicy")
            .field("plugin", &self.plugin.plugin.meta().name)
            .field("params", &self.params)
            .field("warm_instances", &self.warm_instances())
            .finish()
    }
}

/// `retention.evaluation` (`wit/policy.wit`) borrowing the list's columns: lowering
/// copies them into the guest straight from the list, with no copy on the host.
#[derive(ComponentType, Lower)]
#[component(record)]
struct EvaluationRef<'a> {
    repository: &'a str,
    now: i64,
    digests: StringTableRef<'a>,
    #[component(name = "media-types")]
    media_types: StringTableRef<'a>,
    tags: TagColumnsRef<'a>,
    untagged: UntaggedColumnsRef<'a>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct StringTableRef<'a> {
    data: &'a str,
    ends: &'a [u32],
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct TagColumnsRef<'a> {
    names: StringTableRef<'a>,
    digests: &'a [u32],
    #[component(name = "created-at")]
    created_at: &'a [i64],
    #[component(name = "pushed-at")]
    pushed_at: &'a [i64],
    #[component(name = "last-pulled-at")]
    last_pulled_at: &'a [i64],
    #[component(name = "size-bytes")]
    size_bytes: &'a [i64],
    #[component(name = "media-types")]
    media_types: &'a [u32],
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct UntaggedColumnsRef<'a> {
    digests: &'a [u32],
    #[component(name = "created-at")]
    created_at: &'a [i64],
    #[component(name = "pushed-at")]
    pushed_at: &'a [i64],
}

impl<'a> EvaluationRef<'a> {
    fn new(list: &'a TagList, now: Timestamp) -> Self {
        let c = list.columns();
        let table = |t: &'a model::StringTable| StringTableRef { data: t.data(), ends: t.ends() };
        let (t, u) = (c.tags(), c.untagged());
        EvaluationRef {
            repository: &list.repository,
            now: now.unix_micros(),
            digests: table(c.digests()),
            media_types: table(c.media_types()),
            tags: TagColumnsRef {
                names: table(c.names()),
                digests: &t.digests,
                created_at: &t.created_at,
                pushed_at: &t.pushed_at,
                last_pulled_at: &t.last_pulled_at,
                size_bytes: &t.size_bytes,
                media_types: &t.media_types,
            },
            untagged: UntaggedColumnsRef { digests: &u.digests, created_at: &u.created_at, pushed_at: &u.pushed_at },
        }
    }
}
