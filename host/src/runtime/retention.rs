//! Retention plugins: lower a [`TagList`]'s columns into the guest, call, validate the answer;
//! and policies configured once and kept warm across repositories.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::sandbox::SandboxState;
use super::wire::{self, Columns, StringTable};
use super::{Code, FailureCause, Plugin, PluginError, WarmPermit};
use crate::model::{self, Action, ListColumns, RetentionDecisions, Rule, TagList, Timestamp};

// The list's columns are lowered as they are: their "unknown" values must be the wire's.
const _: () = assert!(ListColumns::UNKNOWN_TIME == i64::MIN, "wit/policy.wit: an unknown timestamp is the minimum s64");
const _: () = assert!(ListColumns::UNKNOWN_SIZE == -1, "wit/policy.wit: an unknown size is -1");
const _: () = assert!(ListColumns::UNKNOWN_MEDIA_TYPE == u32::MAX, "wit/policy.wit: an unknown media type is the maximum u32");

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
        let instance = self.create(params)?;
        let mut store = instance.store;
        // Dropping the store drops the policy with it; say so to the guest all the same.
        let _ = instance.handle.resource_drop(&mut store);
        Ok(())
    }

    /// The columns a policy configured with `params` reads (all of them for a plugin
    /// built for contract 0.1, which cannot say).
    pub fn reads(&self, params: &str) -> Result<Columns, PluginError> {
        self.create(params).map(|instance| instance.reads)
    }

    /// Decides every tag and untagged manifest of `list` as of `now`, in a fresh store
    /// (instantiate, `create` from `params`, evaluate). Either every position gets a
    /// verdict or the result is an error: never partial. To evaluate many repositories
    /// with the same params, [`configure`](Self::configure) once instead.
    pub fn evaluate(&self, params: &str, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let mut instance = self.create(params)?;
        self.decide(&mut instance, list, now)
    }

    /// Validates `params` and returns the policy they configure, ready to evaluate
    /// many repositories without parsing them or compiling its patterns again.
    pub fn configure(&self, params: &str) -> Result<ConfiguredPolicy, PluginError> {
        let policy = ConfiguredPolicy { plugin: self.clone(), params: params.to_owned(), idle: Mutex::new(Vec::new()) };
        // The instance that validated the params serves the first repository.
        policy.keep_warm(self.create(params)?);
        Ok(policy)
    }

    /// Instantiates the component in a fresh store, creates its policy from `params` and
    /// asks which columns it reads.
    fn create(&self, params: &str) -> Result<Instance, PluginError> {
        let (mut store, code) = self.plugin.new_store();
        // `create` always runs with its clock at the Unix epoch: a policy created once
        // serves evaluations at many times, and must not depend on when it was created.
        let (instance, handle, reads) = self.plugin.call_in(&mut store, &code, Timestamp::from_unix_micros(0), |store, pre| {
            let instance = pre.instance.instantiate(&mut *store)?;
            let handle = match pre.exports.create(store, &instance, params)? {
                Ok(handle) => handle,
                Err(message) => return Ok(Err(FailureCause::InvalidParams(message))),
            };
            let reads = pre.exports.reads(store, &instance, handle)?;
            Ok(Ok((instance, handle, reads)))
        })?;
        Ok(Instance { store, code, instance, handle, reads, permit: None })
    }

    /// One `evaluate` call on a created policy, its answer validated against `list`.
    fn decide(&self, instance: &mut Instance, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let Instance { store, code, instance, handle, reads, .. } = instance;
        let (instance, handle, reads) = (*instance, *handle, *reads);
        // The names `names.name-pattern.match-tags` matches, for this call only.
        store.data_mut().patterns.call_names = Some(list.columns().shared_names());
        let answer = self.plugin.call_in(store, code, now, |store, pre| {
            let answer: Result<wire::Decisions, String> = if pre.exports.version.declares_columns() {
                pre.exports.call(store, &instance, handle, &evaluation(list, now, reads))?
            } else {
                pre.exports.call(store, &instance, handle, &evaluation_v01(list, now))?
            };
            Ok(answer.map_err(FailureCause::Rejected))
        });
        store.data_mut().patterns.call_names = None;
        let answer = answer?;
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
    /// The code the instance runs.
    code: Arc<Code>,
    instance: wasmtime::component::Instance,
    handle: ResourceAny,
    /// The columns the policy declared it reads (`policy.reads`).
    reads: Columns,
    /// Held while the instance is warm.
    permit: Option<WarmPermit>,
}

impl Instance {
    fn runs_current_code(&self, plugin: &Plugin) -> bool {
        Arc::ptr_eq(&self.code, &plugin.current_code())
    }
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
            // Kept warm on code since replaced (baseline code, now optimized): dropped.
            Some(instance) if instance.runs_current_code(&self.plugin.plugin) => instance,
            _ => self.plugin.create(&self.params)?,
        };
        let decisions = self.plugin.decide(&mut instance, list, now);
        if decisions.is_ok() {
            self.keep_warm(instance);
        }
        decisions
    }

    /// Puts a cleanly answering instance back on the idle list, if it may stay warm.
    fn keep_warm(&self, mut instance: Instance) {
        if !instance.runs_current_code(&self.plugin.plugin) {
            return;
        }
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

    /// The code each instance kept warm runs, most recently used last.
    pub fn warm_instance_tiers(&self) -> Vec<super::Tier> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).iter().map(|i| i.code.tier).collect()
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

/// The list's columns as the wire's borrowed tables: lowering copies them into the guest
/// straight from the list, with no copy on the host.
fn table(t: &model::StringTable) -> StringTable<'_> {
    StringTable { data: t.data(), ends: t.ends() }
}

/// `retention.evaluation` of contract 0.2: only the columns the policy reads; the others
/// are empty lists (the names always go).
fn evaluation(list: &TagList, now: Timestamp, reads: Columns) -> wire::Evaluation<'_> {
    let c = list.columns();
    let (t, u) = (c.tags(), c.untagged());
    fn pick<T>(reads: Columns, column: Columns, values: &[T]) -> &[T] {
        if reads.contains(column) { values } else { &[] }
    }
    wire::Evaluation {
        repository: &list.repository,
        now: now.unix_micros(),
        digests: if reads.contains(Columns::DIGESTS) { table(c.digests()) } else { StringTable::EMPTY },
        media_types: if reads.contains(Columns::MEDIA_TYPES) { table(c.media_types()) } else { StringTable::EMPTY },
        tags: wire::TagColumns {
            names: table(c.names()),
            digests: pick(reads, Columns::DIGESTS, &t.digests),
            created_at: pick(reads, Columns::CREATED_AT, &t.created_at),
            pushed_at: pick(reads, Columns::PUSHED_AT, &t.pushed_at),
            last_pulled_at: pick(reads, Columns::LAST_PULLED_AT, &t.last_pulled_at),
            size_bytes: pick(reads, Columns::SIZE_BYTES, &t.size_bytes),
            media_types: pick(reads, Columns::MEDIA_TYPES, &t.media_types),
        },
        untagged: wire::UntaggedColumns {
            count: u32::try_from(u.digests.len()).expect("a list's length fits the wire's u32 (input limits)"),
            digests: pick(reads, Columns::DIGESTS, &u.digests),
            created_at: pick(reads, Columns::CREATED_AT, &u.created_at),
            pushed_at: pick(reads, Columns::PUSHED_AT, &u.pushed_at),
        },
    }
}

/// `retention.evaluation` of contract 0.1: every column.
fn evaluation_v01(list: &TagList, now: Timestamp) -> wire::EvaluationV01<'_> {
    let c = list.columns();
    let (t, u) = (c.tags(), c.untagged());
    wire::EvaluationV01 {
        repository: &list.repository,
        now: now.unix_micros(),
        digests: table(c.digests()),
        media_types: table(c.media_types()),
        tags: wire::TagColumns {
            names: table(c.names()),
            digests: &t.digests,
            created_at: &t.created_at,
            pushed_at: &t.pushed_at,
            last_pulled_at: &t.last_pulled_at,
            size_bytes: &t.size_bytes,
            media_types: &t.media_types,
        },
        untagged: wire::UntaggedColumnsV01 { digests: &u.digests, created_at: &u.created_at, pushed_at: &u.pushed_at },
    }
}
