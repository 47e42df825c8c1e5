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

use super::{Digest, MediaType, Tag, Timestamp, UntaggedManifest};

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

impl<'a> FromIterator<&'a str> for StringTable {
    fn from_iter<I: IntoIterator<Item = &'a str>>(strings: I) -> Self {
        let mut table = StringTable::default();
        for s in strings {
            table.push(s);
        }
        table
    }
}

/// A tag list laid out for plugins and the planner: the wire shape of
/// `retention.evaluation` in `wit/policy.wit`, so an evaluation copies it as it is.
/// Positions follow the list: tag `i` of [`TagList::tags`](super::TagList::tags) is
/// position `i` in every tag column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListColumns {
    /// Shared: a call in progress holds it for the host's name matching (`runtime::names`).
    names: std::sync::Arc<StringTable>,
    digests: StringTable,
    media_types: StringTable,
    tags: TagColumns,
    untagged: UntaggedColumns,
}

/// One column per tag field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TagColumns {
    /// Index into [`ListColumns::digests`]; tags that share a manifest share an index.
    pub digests: Vec<u32>,
    /// Microseconds since the Unix epoch, or [`ListColumns::UNKNOWN_TIME`].
    pub created_at: Vec<i64>,
    pub pushed_at: Vec<i64>,
    pub last_pulled_at: Vec<i64>,
    /// Bytes, or [`ListColumns::UNKNOWN_SIZE`].
    pub size_bytes: Vec<i64>,
    /// Index into [`ListColumns::media_types`], or [`ListColumns::UNKNOWN_MEDIA_TYPE`].
    pub media_types: Vec<u32>,
}

/// One column per untagged-manifest field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UntaggedColumns {
    /// Index into [`ListColumns::digests`].
    pub digests: Vec<u32>,
    pub created_at: Vec<i64>,
    pub pushed_at: Vec<i64>,
}

impl ListColumns {
    /// A time the registry did not report (the minimum `i64`, as on the wire).
    pub const UNKNOWN_TIME: i64 = i64::MIN;
    /// A size the registry did not report.
    pub const UNKNOWN_SIZE: i64 = -1;
    /// The media-type index of a tag whose media type is unknown.
    pub const UNKNOWN_MEDIA_TYPE: u32 = u32::MAX;

    /// Lays out `tags` and `untagged` (a [`TagList`](super::TagList) does this for
    /// its own contents when it is built).
    pub fn build(tags: &[Tag], untagged: &[UntaggedManifest]) -> Self {
        let time = |t: Option<Timestamp>| t.map_or(Self::UNKNOWN_TIME, Timestamp::unix_micros);
        let mut names = StringTable::with_capacity(tags.len(), tags.iter().map(|t| t.name.len()).sum());
        // Registries give nearly every tag its own digest: size the digest table for that.
        let mut digests = DigestInterner::with_capacity(tags.len() + untagged.len());
        // A repository holds a handful of manifest media types, nearly always known ones.
        let mut media_types = Interner::with_capacity(4, 48);
        let mut known_ids = [Self::UNKNOWN_MEDIA_TYPE; MediaType::KNOWN.len()];
        let n = tags.len();
        let mut columns = TagColumns {
            digests: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            pushed_at: Vec::with_capacity(n),
            last_pulled_at: Vec::with_capacity(n),
            size_bytes: Vec::with_capacity(n),
            media_types: Vec::with_capacity(n),
        };
        for tag in tags {
            names.push(&tag.name);
            columns.digests.push(digests.intern(&tag.digest));
            columns.created_at.push(time(tag.created_at));
            columns.pushed_at.push(time(tag.pushed_at));
            columns.last_pulled_at.push(time(tag.last_pulled_at));
            columns.size_bytes.push(tag.size_bytes.and_then(|s| i64::try_from(s).ok()).unwrap_or(Self::UNKNOWN_SIZE));
            columns.media_types.push(match &tag.media_type {
                None => Self::UNKNOWN_MEDIA_TYPE,
                Some(MediaType::Known(k)) => {
                    let id = &mut known_ids[usize::from(*k)];
                    if *id == Self::UNKNOWN_MEDIA_TYPE {
                        *id = media_types.intern(MediaType::KNOWN[usize::from(*k)]);
                    }
                    *id
                }
                Some(MediaType::Other(m)) => media_types.intern(m),
            });
        }
        let untagged = UntaggedColumns {
            digests: untagged.iter().map(|u| digests.intern(&u.digest)).collect(),
            created_at: untagged.iter().map(|u| time(u.created_at)).collect(),
            pushed_at: untagged.iter().map(|u| time(u.pushed_at)).collect(),
        };
        ListColumns { names: names.into(), digests: digests.table, media_types: media_types.table, tags: columns, untagged }
    }

    /// Tag names, in list order.
    pub fn names(&self) -> &StringTable {
        &self.names
    }

    /// Tag names, in list order, shared.
    pub fn shared_names(&self) -> std::sync::Arc<StringTable> {
        self.names.clone()
    }

    /// Unique digests, first seen first (tags in list order, then untagged manifests).
    pub fn digests(&self) -> &StringTable {
        &self.digests
    }

    /// Unique media types, first seen first.
    pub fn media_types(&self) -> &StringTable {
        &self.media_types
    }

    /// The tags' fields, one column each.
    pub fn tags(&self) -> &TagColumns {
        &self.tags
    }

    /// The untagged manifests' fields, one column each.
    pub fn untagged(&self) -> &UntaggedColumns {
        &self.untagged
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
    use crate::model::{Digest, TagList};

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
        assert_eq!(cols.tags().digests, [0, 1, 0]);
        assert_eq!(cols.digests().len(), 3, "three unique digests including the untagged one");
        assert_eq!(cols.digests().get(2), Some(d('3').as_str()));
        assert_eq!(cols.untagged().digests, [2]);
        assert_eq!(cols.media_types().len(), 1);
        assert_eq!(cols.tags().media_types, [0, ListColumns::UNKNOWN_MEDIA_TYPE, 0]);
    }

    #[test]
    fn known_and_other_media_types_share_one_table() {
        let tag = |name: &str, media_type: &str| {
            let mut t = Tag::new(name, Digest::sha256_of(name.as_bytes()));
            t.media_type = Some(media_type.into());
            t
        };
        let oci = crate::model::OCI_MANIFEST;
        let list = TagList::new("g/r", vec![tag("a", "custom/type"), tag("b", oci), tag("c", "custom/type"), tag("d", oci)], Vec::new())
            .expect("a valid list");
        assert!(matches!(list.tags()[1].media_type, Some(MediaType::Known(_))), "known types are not stored as text");
        let cols = list.columns();
        assert_eq!(cols.tags().media_types, [0, 1, 0, 1]);
        assert_eq!(cols.media_types().get(0), Some("custom/type"));
        assert_eq!(cols.media_types().get(1), Some(oci));
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
        assert_eq!(cols.tags().digests, [0, 1, 0]);
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
        assert_eq!(list.columns().tags().digests, [0]);
        assert_eq!(list.columns().digests().get(0), Some(d(2).as_str()));
        list.remove_tags(&std::collections::HashSet::from(["b"]));
        assert_eq!(list.columns(), &ListColumns::default());
    }
}
