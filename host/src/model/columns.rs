//! The columnar form of a [`TagList`](super::TagList), built once with the list.
//!
//! Plugins receive tag lists column by column (`wit/policy.wit`, `retention.evaluation`):
//! names back to back, digests and media types as indices into tables of unique values.
//! Building those columns means reading every tag's strings from wherever they were
//! allocated and interning ~one digest per tag. At 100k tags that was most of the host's
//! share of an evaluation (docs/benchmarks.md), so the list does it once, when it is
//! built, and every consumer reuses it: each evaluation copies the columns as they are,
//! and the deletion planner groups tags by digest id instead of hashing digests again.

use hashbrown::hash_table::{Entry, HashTable};
use rustc_hash::FxHashMap;

use super::{Digest, Tag, UntaggedManifest};

/// Many strings stored back to back: string `i` is `data[ends[i-1]..ends[i]]`
/// (with `ends[-1] = 0`), the wire shape of `types.string-table`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringTable {
    data: String,
    ends: Vec<u32>,
}

impl StringTable {
    fn with_capacity(count: usize, bytes: usize) -> Self {
        StringTable { data: String::with_capacity(bytes), ends: Vec::with_capacity(count) }
    }

    fn push(&mut self, s: &str) {
        self.data.push_str(s);
        // Tag lists beyond 4 GiB of names are far past any memory cap; saturate rather
        // than wrap so a plugin reports a malformed table instead of aliasing strings.
        self.ends.push(u32::try_from(self.data.len()).unwrap_or(u32::MAX));
    }

    /// All the strings, concatenated.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// The exclusive end offset of each string in [`Self::data`].
    pub fn ends(&self) -> &[u32] {
        &self.ends
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// String `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let start = if i == 0 { 0 } else { *self.ends.get(i - 1)? as usize };
        self.data.get(start..*self.ends.get(i)? as usize)
    }
}

/// A tag list's strings laid out for plugins and the planner. Positions follow the
/// list: tag `i` of [`TagList::tags`](super::TagList::tags) is position `i` here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListColumns {
    names: StringTable,
    digests: StringTable,
    tag_digests: Vec<u32>,
    untagged_digests: Vec<u32>,
    media_types: StringTable,
    tag_media_types: Vec<u32>,
}

impl ListColumns {
    /// The media-type index of a tag whose media type is unknown.
    pub const UNKNOWN_MEDIA_TYPE: u32 = u32::MAX;

    /// Lays out `tags` and `untagged` (a [`TagList`](super::TagList) does this for
    /// its own contents when it is built).
    pub fn build(tags: &[Tag], untagged: &[UntaggedManifest]) -> Self {
        let mut names = StringTable::with_capacity(tags.len(), tags.iter().map(|t| t.name.len()).sum());
        // Registries give nearly every tag its own digest: size the digest table for that.
        let mut digests = DigestInterner::with_capacity(tags.len() + untagged.len());
        // A repository holds a handful of manifest media types.
        let mut media_types = Interner::with_capacity(4, 48);
        let mut tag_digests = Vec::with_capacity(tags.len());
        let mut tag_media_types = Vec::with_capacity(tags.len());
        for tag in tags {
            names.push(&tag.name);
            tag_digests.push(digests.intern(&tag.digest));
            tag_media_types.push(tag.media_type.as_deref().map_or(Self::UNKNOWN_MEDIA_TYPE, |m| media_types.intern(m)));
        }
        let untagged_digests = untagged.iter().map(|u| digests.intern(&u.digest)).collect();
        ListColumns { names, digests: digests.table, tag_digests, untagged_digests, media_types: media_types.table, tag_media_types }
    }

    /// Tag names, in list order.
    pub fn names(&self) -> &StringTable {
        &self.names
    }

    /// Unique digests, first seen first (tags in list order, then untagged manifests).
    pub fn digests(&self) -> &StringTable {
        &self.digests
    }

    /// For each tag, the index of its digest in [`Self::digests`]. Tags that share a
    /// manifest share an index.
    pub fn tag_digests(&self) -> &[u32] {
        &self.tag_digests
    }

    /// For each untagged manifest, the index of its digest in [`Self::digests`].
    pub fn untagged_digests(&self) -> &[u32] {
        &self.untagged_digests
    }

    /// Unique media types, first seen first.
    pub fn media_types(&self) -> &StringTable {
        &self.media_types
    }

    /// For each tag, the index of its media type in [`Self::media_types`], or
    /// [`Self::UNKNOWN_MEDIA_TYPE`].
    pub fn tag_media_types(&self) -> &[u32] {
        &self.tag_media_types
    }
}

/// Unique digests in first-seen order, hashed by the key each digest carries: only
/// copying a new digest and confirming a key match read a digest's text. Interning
/// 100k digests by hashing their text was ~40 % of the build (docs/benchmarks.md).
struct DigestInterner {
    /// (key, index into `table`).
    index: HashTable<(u64, u32)>,
    table: StringTable,
}

impl DigestInterner {
    fn with_capacity(count: usize) -> Self {
        DigestInterner { index: HashTable::with_capacity(count), table: StringTable::with_capacity(count, count * ("sha256:".len() + 64)) }
    }

    fn intern(&mut self, digest: &Digest) -> u32 {
        let key = digest.key();
        let table = &self.table;
        let same = |&(k, i): &(u64, u32)| k == key && table.get(i as usize) == Some(digest.as_str());
        match self.index.entry(key, same, |&(k, _)| k) {
            Entry::Occupied(e) => e.get().1,
            Entry::Vacant(e) => {
                let next = u32::try_from(self.table.len()).expect("fewer than 2^32 unique digests");
                e.insert((key, next));
                self.table.push(digest.as_str());
                next
            }
        }
    }
}

/// Unique strings in first-seen order.
struct Interner<'a> {
    index: FxHashMap<&'a str, u32>,
    table: StringTable,
}

impl<'a> Interner<'a> {
    fn with_capacity(count: usize, typical_len: usize) -> Self {
        let mut index = FxHashMap::default();
        index.reserve(count);
        Interner { index, table: StringTable::with_capacity(count, count * typical_len) }
    }

    fn intern(&mut self, s: &'a str) -> u32 {
        let next = u32::try_from(self.index.len()).expect("fewer than 2^32 unique strings");
        *self.index.entry(s).or_insert_with(|| {
            self.table.push(s);
            next
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, TagList, Timestamp};

    #[test]
    fn columns_follow_the_list_with_interned_digests_and_media_types() {
        let d = |c: char| Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap();
        let mut a = Tag::new("a", d('1'));
        a.created_at = Some(Timestamp::from_unix_micros(5));
        a.media_type = Some("m".into());
        let mut c = Tag::new("c", d('1'));
        c.media_type = Some("m".into());
        let list = TagList::new(
            "g/r",
            // Out of order on purpose: the columns follow the sorted list.
            vec![c, a, Tag::new("bb", d('2'))],
            vec![UntaggedManifest { digest: d('3'), created_at: None, pushed_at: None }],
        )
        .unwrap();
        let cols = list.columns();
        assert_eq!(cols.names().data(), "abbc");
        assert_eq!(cols.names().ends(), [1, 3, 4]);
        assert_eq!(cols.names().get(1), Some("bb"));
        assert_eq!(cols.names().get(3), None);
        assert_eq!(cols.tag_digests(), [0, 1, 0]);
        assert_eq!(cols.digests().len(), 3, "three unique digests including the untagged one");
        assert_eq!(cols.digests().get(2), Some(d('3').as_str()));
        assert_eq!(cols.untagged_digests(), [2]);
        assert_eq!(cols.media_types().len(), 1);
        assert_eq!(cols.tag_media_types(), [0, ListColumns::UNKNOWN_MEDIA_TYPE, 0]);
    }

    #[test]
    fn digests_with_equal_keys_stay_distinct() {
        // Same first 16 hex digits (same key), different digests: an attacker can push
        // such a pair with ~2^32 work, so a key match alone must never merge them.
        let d = |rest: char| Digest::parse(&format!("sha256:{}{}", "0".repeat(16), rest.to_string().repeat(48))).unwrap();
        let (a, b) = (d('a'), d('b'));
        assert_eq!(a.key(), b.key());
        let list = TagList::new("g/r", vec![Tag::new("a", a.clone()), Tag::new("b", b.clone()), Tag::new("c", a.clone())], Vec::new())
            .expect("a valid list");
        let cols = list.columns();
        assert_eq!(cols.tag_digests(), [0, 1, 0]);
        assert_eq!(cols.digests().get(0), Some(a.as_str()));
        assert_eq!(cols.digests().get(1), Some(b.as_str()));
    }

    #[test]
    fn columns_are_rebuilt_when_the_list_changes() {
        let d = |n: u8| Digest::sha256_of(&[n]);
        let mut list =
            TagList::new("g/r", vec![Tag::new("a", d(1)), Tag::new("b", d(2)), Tag::new("c", d(1))], Vec::new()).expect("a valid list");
        list.remove_digest(&d(1));
        assert_eq!(list.columns().names().data(), "b");
        assert_eq!(list.columns().tag_digests(), [0]);
        assert_eq!(list.columns().digests().get(0), Some(d(2).as_str()));
        list.remove_tags(&std::collections::HashSet::from(["b"]));
        assert_eq!(list.columns(), &ListColumns::default());
    }
}
