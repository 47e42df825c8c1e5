//! Retention plugins: encode a [`TagList`] columnar, call, validate the answer.

use super::bindings::retention::exports::tagwarden::policy::retention as wire;
use super::bindings::retention::tagwarden::policy::types::StringTable;
use super::{FailureCause, Plugin, PluginError, TypedPre};
use crate::model::{self, Action, ListColumns, RetentionDecisions, Rule, TagList, Timestamp};

/// The wire value for an unknown timestamp (see `wit/policy.wit`).
const UNKNOWN_TIME: i64 = i64::MIN;
// The list's "unknown media type" index is copied as is: it must be the wire's.
const _: () = assert!(ListColumns::UNKNOWN_MEDIA_TYPE == u32::MAX, "wit/policy.wit: unknown media type is the maximum u32");

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
        self.plugin.call(Timestamp::from_unix_micros(0), |store, pre| {
            let TypedPre::Retention(pre) = pre else { unreachable!("kind checked at construction") };
            let guest = pre.instantiate(&mut *store)?;
            let policy = guest.tagwarden_policy_retention().policy();
            match policy.call_create(&mut *store, params)? {
                Ok(handle) => handle.resource_drop(&mut *store).map(Ok),
                Err(message) => Ok(Err(FailureCause::InvalidParams(message))),
            }
        })
    }

    /// Decides every tag and untagged manifest of `list` as of `now`, in a fresh store.
    /// Either every position gets a verdict or the result is an error: never partial.
    pub fn evaluate(&self, params: &str, list: &TagList, now: Timestamp) -> Result<RetentionDecisions, PluginError> {
        let input = encode(list, now);
        let answer = self.plugin.call(now, |store, pre| {
            let TypedPre::Retention(pre) = pre else { unreachable!("kind checked at construction") };
            let guest = pre.instantiate(&mut *store)?;
            let policy = guest.tagwarden_policy_retention().policy();
            let handle = match policy.call_create(&mut *store, params)? {
                Ok(handle) => handle,
                Err(message) => return Ok(Err(FailureCause::InvalidParams(message))),
            };
            Ok(policy.call_evaluate(&mut *store, handle, &input)?.map_err(FailureCause::Rejected))
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
