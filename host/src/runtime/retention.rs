//! Retention plugins: encode a [`TagList`] columnar, call, validate the answer.

use rustc_hash::FxHashMap;

use super::bindings::retention::exports::tagwarden::policy::retention as wire;
use super::bindings::retention::tagwarden::policy::types::StringTable;
use super::{FailureCause, Plugin, PluginError, TypedPre};
use crate::model::{Action, RetentionDecisions, Rule, TagList, Timestamp};

/// The wire value for an unknown timestamp (see `wit/policy.wit`).
const UNKNOWN_TIME: i64 = i64::MIN;
const UNKNOWN_INDEX: u32 = u32::MAX;

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

/// Builds the columnar evaluation: one copy per column, digests and media types
/// interned into tables.
fn encode(list: &TagList, now: Timestamp) -> wire::Evaluation {
    let tags = list.tags();
    // Registries give nearly every tag its own digest: size the digest table for that.
    let mut digests = Interner::with_capacity(tags.len() + list.untagged.len(), 71);
    let mut media_types = Interner::with_capacity(4, 48);
    let mut names = TableBuilder::with_capacity(tags.len(), tags.iter().map(|t| t.name.len()).sum());
    let mut columns = wire::TagColumns {
        names: StringTable { data: String::new(), ends: Vec::new() },
        digests: Vec::with_capacity(tags.len()),
        created_at: Vec::with_capacity(tags.len()),
        pushed_at: Vec::with_capacity(tags.len()),
        last_pulled_at: Vec::with_capacity(tags.len()),
        size_bytes: Vec::with_capacity(tags.len()),
        media_types: Vec::with_capacity(tags.len()),
    };
    let time = |t: Option<Timestamp>| t.map_or(UNKNOWN_TIME, Timestamp::unix_micros);
    for tag in tags {
        names.push(&tag.name);
        columns.digests.push(digests.intern(tag.digest.as_str()));
        columns.created_at.push(time(tag.created_at));
        columns.pushed_at.push(time(tag.pushed_at));
        columns.last_pulled_at.push(time(tag.last_pulled_at));
        columns.size_bytes.push(tag.size_bytes.and_then(|s| i64::try_from(s).ok()).unwrap_or(-1));
        columns.media_types.push(tag.media_type.as_deref().map_or(UNKNOWN_INDEX, |m| media_types.intern(m)));
    }
    columns.names = names.finish();
    let untagged = wire::UntaggedColumns {
        digests: list.untagged.iter().map(|u| digests.intern(u.digest.as_str())).collect(),
        created_at: list.untagged.iter().map(|u| time(u.created_at)).collect(),
        pushed_at: list.untagged.iter().map(|u| time(u.pushed_at)).collect(),
    };
    wire::Evaluation {
        repository: list.repository.clone(),
        now: now.unix_micros(),
        digests: digests.finish(),
        media_types: media_types.finish(),
        tags: columns,
        untagged,
    }
}

struct TableBuilder {
    data: String,
    ends: Vec<u32>,
}

impl TableBuilder {
    fn with_capacity(count: usize, bytes: usize) -> Self {
        TableBuilder { data: String::with_capacity(bytes), ends: Vec::with_capacity(count) }
    }

    fn push(&mut self, s: &str) {
        self.data.push_str(s);
        // Tag lists beyond 4 GiB of names are far past any memory cap; saturate
        // rather than wrap so the guest reports a malformed table instead of aliasing.
        self.ends.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
    }

    fn finish(self) -> StringTable {
        StringTable { data: self.data, ends: self.ends }
    }
}

/// Unique strings in first-seen order. FxHash: interning 100k digests with the std
/// SipHash map was most of the encoding time (docs/benchmarks.md).
struct Interner<'a> {
    index: FxHashMap<&'a str, u32>,
    table: TableBuilder,
}

impl<'a> Interner<'a> {
    fn with_capacity(count: usize, typical_len: usize) -> Self {
        let mut index = FxHashMap::default();
        index.reserve(count);
        Interner { index, table: TableBuilder::with_capacity(count, count * typical_len) }
    }

    fn intern(&mut self, s: &'a str) -> u32 {
        let next = self.index.len() as u32;
        *self.index.entry(s).or_insert_with(|| {
            self.table.push(s);
            next
        })
    }

    fn finish(self) -> StringTable {
        self.table.finish()
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
        assert_eq!(e.tags.media_types, [0, UNKNOWN_INDEX, UNKNOWN_INDEX]);
        assert_eq!(e.tags.size_bytes, [-1, -1, -1]);
        assert_eq!(e.now, 9);
    }
}
