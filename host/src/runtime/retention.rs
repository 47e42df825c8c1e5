//! Retention plugins: encode a [`TagList`] columnar, call, validate the answer; and
//! policies configured once and kept warm across repositories.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::bindings::retention::RetentionPlugin as Guest;
use super::bindings::retention::exports::tagwarden::policy::retention as wire;
use super::bindings::retention::tagwarden::policy::types::StringTable;
use super::sandbox::SandboxState;
use super::{FailureCause, Plugin, PluginError, TypedPre, WarmPermit};
use crate::model::{self, Action, ListColumns, RetentionDecisions, Rule, TagList, Timestamp};

/// The wire value for an unknown timestamp (see `wit/policy.wit`).
const UNKNOWN_TIME: i64 = i64::MIN;
// The list's "unknown media type" index is copied as is: it must be the wire's.
const _: () = assert!(ListColumns::UNKNOWN_MEDIA_TYPE == u32::MAX, "wit/policy.wit: unknown media type is the maximum u32");

/// An instance whose linear memory grew beyond this is not kept warm: one very large
/// repository should not pin its memory while the instance sits idle.
const WARM_MEMORY_MAX: usize = 16 << 20;
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
        let (guest, handle) = self.create(&mut store, params)?;
        self.decide(&mut store, &guest, handle, list, now)
    }

    /// Validates `params` and returns the policy they configure, ready to evaluate
    /// many repositories without parsing them or compiling its patterns again.
    pub fn configure(&self, params: &str) -> Result<ConfiguredPolicy, PluginError> {
        let policy = ConfiguredPolicy { plugin: self.clone(), params: params.to_owned(), idle: Mutex::new(Vec::new()) };
        // The instance that validated the params serves the first repository.
        let mut store = self.plugin.new_store();
        let (guest, handle) = self.create(&mut store, params)?;
        policy.keep_warm(Instance { store, guest, handle, permit: None });
        Ok(policy)
    }

    /// Instantiates the component in `store` and creates its policy from `params`.
    fn create(&self, store: &mut Store<SandboxState>, params: &str) -> Result<(Guest, ResourceAny), PluginError> {
        // `create` always runs with its clock at the Unix epoch: a policy created once
        // serves evaluations at many times, and must not depend on when it was created.
        self.plugin.call_in(store, Timestamp::from_unix_micros(0), |store, pre| {
            let TypedPre::Retention(pre) = pre else { unreachable!("kind checked at construction") };
            let guest = pre.instantiate(&mut *store)?;
            match guest.tagwarden_policy_retention().policy().call_create(&mut *store, params)? {
                Ok(handle) => Ok(Ok((guest, handle))),
                Err(message) => Ok(Err(FailureCause::InvalidParams(message))),
            }
        })
    }

    /// One `evaluate` call on a created policy, its answer validated against `list`.
    fn decide(
        &self,
        store: &mut Store<SandboxState>,
        guest: &Guest,
        handle: ResourceAny,
        list: &TagList,
        now: Timestamp,
    ) -> Result<RetentionDecisions, PluginError> {
        let input = encode(list, now);
        let answer = self.plugin.call_in(store, now, |store, _| {
            Ok(guest.tagwarden_policy_retention().policy().call_evaluate(store, handle, &input)?.map_err(FailureCause::Rejected))
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
/// stderr, when its memory grew past 16 MiB, or when the runtime's warm slots
/// ([`super::RuntimeConfig::max_warm_instances`]) are taken.
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
    guest: Guest,
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
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => {
                let mut store = self.plugin.plugin.new_store();
                let (guest, handle) = self.plugin.create(&mut store, &self.params)?;
                Instance { store, guest, handle, permit: None }
            }
        };
        let decisions = self.plugin.decide(&mut instance.store, &instance.guest, instance.handle, list, now);
        if decisions.is_ok() {
            self.keep_warm(instance);
        }
        decisions
    }

    /// Puts a cleanly answering instance back on the idle list, if it may stay warm.
    fn keep_warm(&self, mut instance: Instance) {
        let state = instance.store.data();
        if state.memory.size > WARM_MEMORY_MAX || state.wrote_stderr() {
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

/// Builds the wire evaluation. The list's strings are already columnar and interned
/// ([`TagList::columns`]): names, digests and media types are copied as they are.
fn encode(list: &TagList, now: Timestamp) -> wire::Evaluation {
    let columns = list.columns();
    let table = |t: &model::StringTable| StringTable { data: t.data().to_owned(), ends: t.ends().to_vec() };
    let time = |t: Option<Timestamp>| t.map_or(UNKNOWN_TIME, Timestamp::unix_micros);
    let tags = list.tags();
    let untagged = list.untagged();
    wire::Evaluation {
        repository: list.repository.clone(),
        now: now.unix_micros(),
        digests: table(columns.digests()),
        media_types: table(columns.media_types()),
        tags: wire::TagColumns {
            names: table(columns.names()),
            digests: columns.tag_digests().to_vec(),
            created_at: tags.iter().map(|t| time(t.created_at)).collect(),
            pushed_at: tags.iter().map(|t| time(t.pushed_at)).collect(),
            last_pulled_at: tags.iter().map(|t| time(t.last_pulled_at)).collect(),
            size_bytes: tags.iter().map(|t| t.size_bytes.and_then(|s| i64::try_from(s).ok()).unwrap_or(-1)).collect(),
            media_types: columns.tag_media_types().to_vec(),
        },
        untagged: wire::UntaggedColumns {
            digests: columns.untagged_digests().to_vec(),
            created_at: untagged.iter().map(|u| time(u.created_at)).collect(),
            pushed_at: untagged.iter().map(|u| time(u.pushed_at)).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, Tag, UntaggedManifest};

    #[test]
    fn encoding_is_columnar_with_interned_digests() {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let mut a = Tag::new("a", d('1'));
        a.created_at = Some(Timestamp::from_unix_micros(5));
        a.media_type = Some("m".into());
        let list = TagList::new(
            "g/r",
            vec![a, Tag::new("bb", d('2')), Tag::new("c", d('1'))],
            vec![UntaggedManifest { digest: d('3'), created_at: None, pushed_at: None }],
        )
        .unwrap();
        let e = encode(&list, Timestamp::from_unix_micros(9));
        assert_eq!(e.tags.names.data, "abbc");
        assert_eq!(e.tags.names.ends, [1, 3, 4]);
        assert_eq!(e.tags.digests, [0, 1, 0]);
        assert_eq!(e.digests.ends.len(), 3, "three unique digests including the untagged one");
        assert_eq!(e.untagged.digests, [2]);
        assert_eq!(e.tags.created_at, [5, UNKNOWN_TIME, UNKNOWN_TIME]);
        assert_eq!(e.tags.media_types, [0, ListColumns::UNKNOWN_MEDIA_TYPE, ListColumns::UNKNOWN_MEDIA_TYPE]);
        assert_eq!(e.tags.size_bytes, [-1, -1, -1]);
        assert_eq!(e.now, 9);
    }
}
