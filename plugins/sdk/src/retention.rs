//! Tag retention: typed input, verdicts, and the wire conversion.

use std::borrow::Cow;

use crate::Timestamp;

/// The columns a retention policy reads besides tag names, which it always gets
/// ([`RetentionPolicy::reads`]). The host sends only these; a policy that reads names
/// and times does not pay for copying digests it never looks at (at 100k tags, digests
/// are over half of what would be copied).
///
/// ```
/// # use tagwarden_plugin_sdk::Columns;
/// let reads = Columns::PUSHED_AT | Columns::CREATED_AT;
/// assert!(reads.contains(Columns::PUSHED_AT) && !reads.contains(Columns::DIGESTS));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Columns(u8);

impl Columns {
    /// Tag names only.
    pub const NONE: Columns = Columns(0);
    /// [`Tag::digest`] and [`UntaggedManifest::digest`].
    pub const DIGESTS: Columns = Columns(1);
    /// [`Tag::created_at`] and [`UntaggedManifest::created_at`].
    pub const CREATED_AT: Columns = Columns(1 << 1);
    /// [`Tag::pushed_at`] and [`UntaggedManifest::pushed_at`].
    pub const PUSHED_AT: Columns = Columns(1 << 2);
    /// [`Tag::last_pulled_at`].
    pub const LAST_PULLED_AT: Columns = Columns(1 << 3);
    /// [`Tag::size_bytes`].
    pub const SIZE_BYTES: Columns = Columns(1 << 4);
    /// [`Tag::media_type`].
    pub const MEDIA_TYPES: Columns = Columns(1 << 5);
    /// Every column: what a policy that declares nothing reads.
    pub const ALL: Columns = Columns((1 << 6) - 1);

    /// Both sets.
    pub const fn union(self, other: Columns) -> Columns {
        Columns(self.0 | other.0)
    }

    /// Whether every column of `other` is in this set.
    pub const fn contains(self, other: Columns) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the columns in this set, as the contract spells them.
    pub fn names(self) -> Vec<&'static str> {
        COLUMN_NAMES.iter().filter(|(c, _)| self.contains(*c)).map(|&(_, n)| n).collect()
    }
}

/// Each column with its name in the contract and the SDK constant that declares it.
const COLUMN_NAMES: [(Columns, &str); 6] = [
    (Columns::DIGESTS, "digests"),
    (Columns::CREATED_AT, "created-at"),
    (Columns::PUSHED_AT, "pushed-at"),
    (Columns::LAST_PULLED_AT, "last-pulled-at"),
    (Columns::SIZE_BYTES, "size-bytes"),
    (Columns::MEDIA_TYPES, "media-types"),
];

impl std::ops::BitOr for Columns {
    type Output = Columns;
    fn bitor(self, other: Columns) -> Columns {
        self.union(other)
    }
}

impl std::fmt::Debug for Columns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Columns({})", if *self == Columns::NONE { "names only".to_owned() } else { self.names().join(" | ") })
    }
}

/// Refuses to read a column the policy did not declare: the host did not send it, so
/// any value would be made up. The panic names the caller's line (`#[track_caller]`).
#[track_caller]
#[inline]
fn require(reads: Columns, column: Columns, what: &str, constant: &str) {
    if !reads.contains(column) {
        undeclared(what, constant)
    }
}

#[track_caller]
#[cold]
fn undeclared(what: &str, constant: &str) -> ! {
    panic!(
        "read {what}, a column this policy does not declare: add `Columns::{constant}` to what its \
         `RetentionPolicy::reads` returns (the host sends only the columns a policy declares)"
    )
}

/// One tag of the repository being evaluated: its name, and the other columns read on
/// demand through its methods.
///
/// A column is there only if the policy declares it in [`RetentionPolicy::reads`];
/// reading one it did not declare panics, naming the line and the column to declare
/// (the host sends nothing for it). [`crate::testing::evaluate`] gives native tests only
/// the declared columns too, so a missing declaration fails there first.
#[derive(Clone, Copy)]
pub struct Tag<'a> {
    /// The tag name, e.g. `v1.2.0`.
    pub name: &'a str,
    source: TagSource<'a>,
}

#[derive(Clone, Copy)]
enum TagSource<'a> {
    /// Built natively (tests): the values, and which of them the policy may read.
    Values(TagValues<'a>),
    /// Tag `i` of the columns the host sent.
    Columns(wire::TagColumnsView<'a>, usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TagValues<'a> {
    digest: &'a str,
    created_at: Option<Timestamp>,
    pushed_at: Option<Timestamp>,
    last_pulled_at: Option<Timestamp>,
    size_bytes: Option<u64>,
    media_type: Option<&'a str>,
    reads: Columns,
}

impl<'a> Tag<'a> {
    /// A tag with only a name and a digest; every other field unknown. Fill in what a
    /// test needs with the `with_*` methods:
    ///
    /// ```
    /// # use tagwarden_plugin_sdk::{Tag, Timestamp};
    /// let tag = Tag::new("v1.2.0", "sha256:…").with_pushed_at(Timestamp::from_unix_secs(1_700_000_000)).with_size_bytes(1024);
    /// assert_eq!((tag.name, tag.created_at(), tag.size_bytes()), ("v1.2.0", None, Some(1024)));
    /// ```
    pub const fn new(name: &'a str, digest: &'a str) -> Self {
        Tag {
            name,
            source: TagSource::Values(TagValues {
                digest,
                created_at: None,
                pushed_at: None,
                last_pulled_at: None,
                size_bytes: None,
                media_type: None,
                reads: Columns::ALL,
            }),
        }
    }

    /// The values of a natively built tag (the `with_*` builders); a tag read from the
    /// host's columns is turned into one with everything it has.
    fn values(self) -> TagValues<'a> {
        match self.source {
            TagSource::Values(v) => v,
            TagSource::Columns(view, i) => view.values(i),
        }
    }

    fn with(self, f: impl FnOnce(&mut TagValues<'a>)) -> Self {
        let mut v = self.values();
        f(&mut v);
        Tag { name: self.name, source: TagSource::Values(v) }
    }

    // The builders take a value or an `Option` (`None`: unknown), so that tests can
    // pass either straight through.

    /// This tag, built at `at`.
    pub fn with_created_at(self, at: impl Into<Option<Timestamp>>) -> Self {
        self.with(|v| v.created_at = at.into())
    }

    /// This tag, last pushed at `at`.
    pub fn with_pushed_at(self, at: impl Into<Option<Timestamp>>) -> Self {
        self.with(|v| v.pushed_at = at.into())
    }

    /// This tag, last pulled at `at`.
    pub fn with_last_pulled_at(self, at: impl Into<Option<Timestamp>>) -> Self {
        self.with(|v| v.last_pulled_at = at.into())
    }

    /// This tag, of `bytes` bytes.
    pub fn with_size_bytes(self, bytes: impl Into<Option<u64>>) -> Self {
        self.with(|v| v.size_bytes = bytes.into())
    }

    /// This tag, whose manifest has media type `media_type`.
    pub fn with_media_type(self, media_type: impl Into<Option<&'a str>>) -> Self {
        self.with(|v| v.media_type = media_type.into())
    }

    /// This tag as a policy that reads only `reads` sees it.
    pub(crate) fn restricted_to(self, reads: Columns) -> Self {
        self.with(|v| v.reads = Columns(v.reads.0 & reads.0))
    }

    /// The manifest digest it points at, e.g. `sha256:…`; tags with equal digests share
    /// a manifest. Needs [`Columns::DIGESTS`].
    #[inline]
    #[track_caller]
    pub fn digest(&self) -> &'a str {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::DIGESTS, "Tag::digest", "DIGESTS");
                v.digest
            }
            TagSource::Columns(view, i) => view.digest(i),
        }
    }

    /// When the image was built (its config's `created`), if known. Needs [`Columns::CREATED_AT`].
    #[inline]
    #[track_caller]
    pub fn created_at(&self) -> Option<Timestamp> {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::CREATED_AT, "Tag::created_at", "CREATED_AT");
                v.created_at
            }
            TagSource::Columns(view, i) => view.created_at(i),
        }
    }

    /// When the tag was last pushed or moved, if the registry records it. Needs [`Columns::PUSHED_AT`].
    #[inline]
    #[track_caller]
    pub fn pushed_at(&self) -> Option<Timestamp> {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::PUSHED_AT, "Tag::pushed_at", "PUSHED_AT");
                v.pushed_at
            }
            TagSource::Columns(view, i) => view.pushed_at(i),
        }
    }

    /// When the tag was last pulled, if the registry records it. Needs [`Columns::LAST_PULLED_AT`].
    #[inline]
    #[track_caller]
    pub fn last_pulled_at(&self) -> Option<Timestamp> {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::LAST_PULLED_AT, "Tag::last_pulled_at", "LAST_PULLED_AT");
                v.last_pulled_at
            }
            TagSource::Columns(view, i) => view.last_pulled_at(i),
        }
    }

    /// The image's size in bytes as the registry reports it (config plus layers; for an
    /// index, the sum of its children), if known. Needs [`Columns::SIZE_BYTES`].
    #[inline]
    #[track_caller]
    pub fn size_bytes(&self) -> Option<u64> {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::SIZE_BYTES, "Tag::size_bytes", "SIZE_BYTES");
                v.size_bytes
            }
            TagSource::Columns(view, i) => view.size_bytes(i),
        }
    }

    /// The manifest media type, if known. Needs [`Columns::MEDIA_TYPES`].
    #[inline]
    #[track_caller]
    pub fn media_type(&self) -> Option<&'a str> {
        match self.source {
            TagSource::Values(v) => {
                require(v.reads, Columns::MEDIA_TYPES, "Tag::media_type", "MEDIA_TYPES");
                v.media_type
            }
            TagSource::Columns(view, i) => view.media_type(i),
        }
    }
}

impl PartialEq for Tag<'_> {
    /// Equal names and equal values in every column both may read.
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.values(), other.values());
        let both = Columns(a.reads.0 & b.reads.0);
        let same = |c: Columns, eq: bool| !both.contains(c) || eq;
        self.name == other.name
            && a.reads == b.reads
            && same(Columns::DIGESTS, a.digest == b.digest)
            && same(Columns::CREATED_AT, a.created_at == b.created_at)
            && same(Columns::PUSHED_AT, a.pushed_at == b.pushed_at)
            && same(Columns::LAST_PULLED_AT, a.last_pulled_at == b.last_pulled_at)
            && same(Columns::SIZE_BYTES, a.size_bytes == b.size_bytes)
            && same(Columns::MEDIA_TYPES, a.media_type == b.media_type)
    }
}

impl Eq for Tag<'_> {}

impl std::fmt::Debug for Tag<'_> {
    /// The name and every column the policy may read.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.values();
        let mut d = f.debug_struct("Tag");
        d.field("name", &self.name);
        let r = v.reads;
        if r.contains(Columns::DIGESTS) {
            d.field("digest", &v.digest);
        }
        if r.contains(Columns::CREATED_AT) {
            d.field("created_at", &v.created_at);
        }
        if r.contains(Columns::PUSHED_AT) {
            d.field("pushed_at", &v.pushed_at);
        }
        if r.contains(Columns::LAST_PULLED_AT) {
            d.field("last_pulled_at", &v.last_pulled_at);
        }
        if r.contains(Columns::SIZE_BYTES) {
            d.field("size_bytes", &v.size_bytes);
        }
        if r.contains(Columns::MEDIA_TYPES) {
            d.field("media_type", &v.media_type);
        }
        d.finish()
    }
}

/// A manifest that no tag points at. Its columns follow the policy's declaration like a
/// [`Tag`]'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UntaggedManifest<'a> {
    digest: &'a str,
    created_at: Option<Timestamp>,
    pushed_at: Option<Timestamp>,
    reads: Columns,
}

impl<'a> UntaggedManifest<'a> {
    /// An untagged manifest with digest `digest`, its times unknown.
    pub const fn new(digest: &'a str) -> Self {
        UntaggedManifest { digest, created_at: None, pushed_at: None, reads: Columns::ALL }
    }

    /// This manifest, built at `at` (a value or an `Option`).
    pub fn with_created_at(mut self, at: impl Into<Option<Timestamp>>) -> Self {
        self.created_at = at.into();
        self
    }

    /// This manifest, pushed at `at` (a value or an `Option`).
    pub fn with_pushed_at(mut self, at: impl Into<Option<Timestamp>>) -> Self {
        self.pushed_at = at.into();
        self
    }

    pub(crate) fn restricted_to(mut self, reads: Columns) -> Self {
        self.reads = Columns(self.reads.0 & reads.0);
        self
    }

    /// Its digest. Needs [`Columns::DIGESTS`].
    #[track_caller]
    pub fn digest(&self) -> &'a str {
        require(self.reads, Columns::DIGESTS, "UntaggedManifest::digest", "DIGESTS");
        self.digest
    }

    /// When its image was built, if known. Needs [`Columns::CREATED_AT`].
    #[track_caller]
    pub fn created_at(&self) -> Option<Timestamp> {
        require(self.reads, Columns::CREATED_AT, "UntaggedManifest::created_at", "CREATED_AT");
        self.created_at
    }

    /// When it was pushed, if known. Needs [`Columns::PUSHED_AT`].
    #[track_caller]
    pub fn pushed_at(&self) -> Option<Timestamp> {
        require(self.reads, Columns::PUSHED_AT, "UntaggedManifest::pushed_at", "PUSHED_AT");
        self.pushed_at
    }
}

/// Everything a retention decision may depend on.
///
/// The host builds it in a plugin; in native tests build one with [`RetentionInput::new`]
/// (or [`crate::testing`]).
#[derive(Debug, Clone)]
pub struct RetentionInput<'a> {
    /// The repository path, e.g. `group/app`.
    pub repository: &'a str,
    /// The evaluation time; the plugin's only clock.
    pub now: Timestamp,
    /// Every tag, sorted by name.
    pub tags: Tags<'a>,
    /// Every untagged manifest.
    pub untagged: Vec<UntaggedManifest<'a>>,
}

impl<'a> RetentionInput<'a> {
    /// The input the host would send for `tags` of `repository` at `now`, with no
    /// untagged manifest. The host sorts tags by name, byte-wise; so does this, so that a
    /// test sees what a plugin sees.
    pub fn new(repository: &'a str, now: Timestamp, tags: impl IntoIterator<Item = Tag<'a>>) -> Self {
        let mut tags: Vec<Tag<'a>> = tags.into_iter().collect();
        tags.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        RetentionInput { repository, now, tags: tags.into(), untagged: Vec::new() }
    }

    /// This input with `untagged` as its untagged manifests.
    pub fn with_untagged(mut self, untagged: Vec<UntaggedManifest<'a>>) -> Self {
        self.untagged = untagged;
        self
    }

    /// For every tag, in order, whether `pattern` matches its name (anywhere in it, like
    /// `Regex::is_match`). In a plugin the host matches the names it sent at native
    /// speed and no name is walked in Wasm; natively the same matcher runs here, on each
    /// name whose answer is asked for ([`Matches`](crate::names::Matches)).
    #[cfg(feature = "names")]
    pub fn matching<'s>(&'s self, pattern: &'s crate::names::NamePattern) -> crate::names::Matches<'s> {
        pattern.match_tags(&self.tags)
    }

    /// This input as the host sends it to a policy that [`reads`](RetentionPolicy::reads)
    /// only `reads`: reading any other column panics, as it would in the plugin.
    pub fn restricted_to(mut self, reads: Columns) -> Self {
        self.tags = self.tags.iter().map(|t| t.restricted_to(reads)).collect();
        self.untagged = self.untagged.into_iter().map(|u| u.restricted_to(reads)).collect();
        self
    }
}

/// The tags of a [`RetentionInput`], sorted by name. Iterate with [`Tags::iter`] or
/// `for tag in &input.tags`, and read one with [`Tags::at`] or [`Tags::get`]; each
/// [`Tag`] is a small `Copy` value.
///
/// In a plugin this is a view over the columns the host sent: a tag is read from them
/// when asked for, so a repository of 100k tags costs no allocation per tag. Natively
/// (in tests) it is a plain list: build one with `collect()` or `Tags::from(vec)`.
#[derive(Debug, Clone)]
pub struct Tags<'a>(TagsRepr<'a>);

#[derive(Debug, Clone)]
enum TagsRepr<'a> {
    List(Vec<Tag<'a>>),
    Columns(wire::TagColumnsView<'a>),
}

impl<'a> Tags<'a> {
    #[inline]
    pub fn len(&self) -> usize {
        match &self.0 {
            TagsRepr::List(tags) => tags.len(),
            TagsRepr::Columns(view) => view.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tag `i`, if there is one.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Tag<'a>> {
        (i < self.len()).then(|| self.tag(i))
    }

    /// Tag `i`. Panics when `i` is out of range, like indexing a slice; the panic names
    /// the caller's line, not the SDK's (`#[track_caller]`).
    #[inline]
    #[track_caller]
    pub fn at(&self, i: usize) -> Tag<'a> {
        // A `match`, not `unwrap_or_else`: a closure would not carry the caller's location.
        match self.get(i) {
            Some(tag) => tag,
            None => panic!("tag index {i} out of range for {} tags", self.len()),
        }
    }

    /// Every tag, in order.
    #[inline]
    pub fn iter(&self) -> TagsIter<'_, 'a> {
        TagsIter { tags: self, positions: 0..self.len() }
    }

    /// Whether these are the tags the host sent to the evaluation in progress (which
    /// the host's `names` interface matches), not a list built in the plugin.
    #[cfg(all(feature = "names", target_arch = "wasm32"))]
    pub(crate) fn is_from_host(&self) -> bool {
        matches!(self.0, TagsRepr::Columns(_))
    }

    /// Tag `i`'s name; panics when `i` is out of range.
    #[cfg(feature = "names")]
    #[inline]
    #[track_caller]
    pub(crate) fn name(&self, i: usize) -> &'a str {
        match &self.0 {
            TagsRepr::List(tags) => tags[i].name,
            TagsRepr::Columns(view) => {
                assert!(i < view.len(), "tag index {i} out of range for {} tags", view.len());
                view.name(i)
            }
        }
    }

    /// Tag `i`, which the caller knows is in range.
    #[inline]
    fn tag(&self, i: usize) -> Tag<'a> {
        match &self.0 {
            TagsRepr::List(tags) => tags[i],
            TagsRepr::Columns(view) => Tag { name: view.name(i), source: TagSource::Columns(*view, i) },
        }
    }
}

/// The iterator of [`Tags::iter`].
#[derive(Debug, Clone)]
pub struct TagsIter<'t, 'a> {
    tags: &'t Tags<'a>,
    positions: std::ops::Range<usize>,
}

impl<'a> Iterator for TagsIter<'_, 'a> {
    type Item = Tag<'a>;

    #[inline]
    fn next(&mut self) -> Option<Tag<'a>> {
        self.positions.next().map(|i| self.tags.tag(i))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.positions.size_hint()
    }
}

impl DoubleEndedIterator for TagsIter<'_, '_> {
    #[inline]
    fn next_back(&mut self) -> Option<Self::Item> {
        self.positions.next_back().map(|i| self.tags.tag(i))
    }
}

impl ExactSizeIterator for TagsIter<'_, '_> {}

impl<'a> From<Vec<Tag<'a>>> for Tags<'a> {
    fn from(tags: Vec<Tag<'a>>) -> Self {
        Tags(TagsRepr::List(tags))
    }
}

impl<'a> FromIterator<Tag<'a>> for Tags<'a> {
    fn from_iter<I: IntoIterator<Item = Tag<'a>>>(iter: I) -> Self {
        Tags(TagsRepr::List(iter.into_iter().collect()))
    }
}

impl<'t, 'a> IntoIterator for &'t Tags<'a> {
    type Item = Tag<'a>;
    type IntoIter = TagsIter<'t, 'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Keep or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Keep,
    Delete,
}

/// The decision for one tag or manifest, with the reason shown to operators.
///
/// Reasons are usually `&'static str` (no allocation per tag); the SDK sends each
/// distinct (action, reason) pair over the wire once. The host accepts at most
/// [`MAX_RULES`] distinct pairs per answer and reasons of at most [`MAX_REASON_BYTES`]:
/// a reason that names a param value is built once, in `create`, with [`interned`],
/// never `format!`ted per tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    pub reason: Cow<'static, str>,
}

impl Verdict {
    /// Keep, because of `reason`.
    pub fn keep(reason: impl Into<Cow<'static, str>>) -> Self {
        Verdict { action: Action::Keep, reason: reason.into() }
    }

    /// Delete, because of `reason`.
    pub fn delete(reason: impl Into<Cow<'static, str>>) -> Self {
        Verdict { action: Action::Delete, reason: reason.into() }
    }
}

/// The most distinct (action, reason) pairs an answer may carry (one byte per position
/// on the wire). The host refuses an answer with more and deletes nothing.
pub const MAX_RULES: usize = 256;

/// The longest reason the host accepts, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// A reason built at run time (typically in `create`, naming a param value) made
/// `'static`, so that cloning it into every verdict allocates nothing and the SDK finds
/// equal reasons by address.
///
/// Each distinct text is kept once for the life of the plugin instance: call it in
/// `create` for the few reasons a policy's params produce, not per tag. Past 1024
/// distinct texts (a host that creates policies with ever new params) texts are no
/// longer kept, only returned as owned strings.
///
/// ```
/// # use tagwarden_plugin_sdk::{interned, Verdict};
/// let keep_n = 5;
/// let among = Verdict::keep(interned(format!("keep_n: among the {keep_n} most recent")));
/// let again = Verdict::keep(interned(format!("keep_n: among the {keep_n} most recent")));
/// assert!(std::ptr::eq(among.reason.as_ptr(), again.reason.as_ptr()));
/// ```
pub fn interned(text: impl Into<String>) -> Cow<'static, str> {
    use std::sync::{Mutex, PoisonError};
    const MAX_INTERNED: usize = 1024;
    static INTERNED: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let text = text.into();
    let mut table = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&known) = table.iter().find(|&&t| t == text) {
        return Cow::Borrowed(known);
    }
    if table.len() >= MAX_INTERNED {
        return Cow::Owned(text);
    }
    let leaked: &'static str = Box::leak(text.into_boxed_str());
    table.push(leaked);
    Cow::Borrowed(leaked)
}

/// A plugin's answer: one verdict per tag and per untagged manifest, in input order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub tags: Vec<Verdict>,
    pub untagged: Vec<Verdict>,
}

impl Decisions {
    /// The same verdict for every tag and untagged manifest of `input`.
    pub fn uniform(input: &RetentionInput<'_>, verdict: Verdict) -> Self {
        Decisions { tags: vec![verdict.clone(); input.tags.len()], untagged: vec![verdict; input.untagged.len()] }
    }
}

/// A tag-retention policy. Implement it and export it with [`crate::export_retention!`].
pub trait RetentionPolicy: Sized + 'static {
    /// Validates the operator's params (JSON text, `{}` when none were given) and
    /// prepares the policy. The error is shown to the operator: name the param and say
    /// what was expected.
    fn create(params: &str) -> Result<Self, String>;

    /// Decides every tag and untagged manifest. Return exactly one verdict for each, in
    /// input order; the host rejects any other answer and deletes nothing.
    fn evaluate(&self, input: &RetentionInput<'_>) -> Result<Decisions, String>;

    /// The columns `evaluate` reads besides tag names; the host sends only these.
    /// Declare exactly what the policy reads: reading a column it did not declare panics
    /// (the host deletes nothing then), and every column declared but unread is copied
    /// into the plugin for nothing. The default, every column, is always correct and
    /// never the fastest.
    fn reads(&self) -> Columns {
        Columns::ALL
    }
}

/// Wire conversion, used by the export macro.
#[doc(hidden)]
pub mod wire {
    use super::*;
    use crate::bindings::retention::exports::tagwarden::policy::retention as w;
    use crate::bindings::retention::tagwarden::policy::types::StringTable;

    /// The resource representation behind the exported `policy`.
    pub struct PolicyResource<P>(pub P);

    impl<P: RetentionPolicy> w::GuestPolicy for PolicyResource<P> {
        fn create(params: String) -> Result<w::Policy, String> {
            let _call = crate::panic::Call::enter("create");
            P::create(&params).map(|p| w::Policy::new(PolicyResource(p)))
        }

        fn reads(&self) -> w::Columns {
            let reads = self.0.reads();
            let mut wire = w::Columns::empty();
            for (ours, theirs) in [
                (Columns::DIGESTS, w::Columns::DIGESTS),
                (Columns::CREATED_AT, w::Columns::CREATED_AT),
                (Columns::PUSHED_AT, w::Columns::PUSHED_AT),
                (Columns::LAST_PULLED_AT, w::Columns::LAST_PULLED_AT),
                (Columns::SIZE_BYTES, w::Columns::SIZE_BYTES),
                (Columns::MEDIA_TYPES, w::Columns::MEDIA_TYPES),
            ] {
                if reads.contains(ours) {
                    wire |= theirs;
                }
            }
            wire
        }

        fn evaluate(&self, input: w::Evaluation) -> Result<w::Decisions, String> {
            let _call = crate::panic::Call::enter("evaluate");
            let input = decode(&input, self.0.reads())?;
            let decisions = self.0.evaluate(&input)?;
            encode(decisions)
        }
    }

    /// Checks that a string table is well formed, so that reading it cannot fail later:
    /// offsets never decrease, stay within the data and fall on character boundaries.
    fn check_table(t: &StringTable, what: &str) -> Result<(), String> {
        let mut start = 0usize;
        for &end in &t.ends {
            let end = end as usize;
            if end < start || end > t.data.len() || !t.data.is_char_boundary(end) {
                return Err(format!("malformed {what} table at offset {start}..{end}"));
            }
            start = end;
        }
        Ok(())
    }

    /// Checks that every index in `column` is below `len`; `what` names the column.
    fn check_indices(column: &[u32], len: usize, what: &str) -> Result<(), String> {
        // The maximum vectorises; the loop that finds the culprit runs only on error.
        match column.iter().copied().max() {
            Some(max) if max as usize >= len => Err(format!("{what} index {max} out of range (the table has {len} entries)")),
            _ => Ok(()),
        }
    }

    /// String `i` of a table checked by [`check_table`]; `i` must be in range.
    #[inline(always)]
    fn string(t: &StringTable, i: usize) -> &str {
        let end = t.ends[i] as usize;
        let start = if i == 0 { 0 } else { t.ends[i - 1] as usize };
        // SAFETY: `check_table` proved every offset of this table non-decreasing, within
        // `data` and on a character boundary, so `start..end` is a valid `str` range.
        // (Checked slicing here was 6 % of a 100k-tag evaluation in Wasm.)
        unsafe { t.data.get_unchecked(start..end) }
    }

    fn column_len(what: &str, len: usize, expected: usize) -> Result<(), String> {
        if len == expected { Ok(()) } else { Err(format!("column {what} has {len} entries, expected {expected}")) }
    }

    /// The tags of an evaluation, read from its columns on demand. Built only by
    /// [`decode`], which checks everything the readers below rely on: every declared
    /// column has one entry per tag, every index is in range.
    #[derive(Debug, Clone, Copy)]
    pub struct TagColumnsView<'a> {
        e: &'a w::Evaluation,
        reads: Columns,
    }

    impl<'a> TagColumnsView<'a> {
        #[inline]
        pub(super) fn len(&self) -> usize {
            self.e.tags.names.ends.len()
        }

        #[inline]
        pub(super) fn name(&self, i: usize) -> &'a str {
            string(&self.e.tags.names, i)
        }

        #[inline]
        #[track_caller]
        pub(super) fn digest(&self, i: usize) -> &'a str {
            require(self.reads, Columns::DIGESTS, "Tag::digest", "DIGESTS");
            string(&self.e.digests, self.e.tags.digests[i] as usize)
        }

        #[inline]
        #[track_caller]
        pub(super) fn created_at(&self, i: usize) -> Option<Timestamp> {
            require(self.reads, Columns::CREATED_AT, "Tag::created_at", "CREATED_AT");
            Timestamp::from_wire(self.e.tags.created_at[i])
        }

        #[inline]
        #[track_caller]
        pub(super) fn pushed_at(&self, i: usize) -> Option<Timestamp> {
            require(self.reads, Columns::PUSHED_AT, "Tag::pushed_at", "PUSHED_AT");
            Timestamp::from_wire(self.e.tags.pushed_at[i])
        }

        #[inline]
        #[track_caller]
        pub(super) fn last_pulled_at(&self, i: usize) -> Option<Timestamp> {
            require(self.reads, Columns::LAST_PULLED_AT, "Tag::last_pulled_at", "LAST_PULLED_AT");
            Timestamp::from_wire(self.e.tags.last_pulled_at[i])
        }

        #[inline]
        #[track_caller]
        pub(super) fn size_bytes(&self, i: usize) -> Option<u64> {
            require(self.reads, Columns::SIZE_BYTES, "Tag::size_bytes", "SIZE_BYTES");
            u64::try_from(self.e.tags.size_bytes[i]).ok()
        }

        #[inline]
        #[track_caller]
        pub(super) fn media_type(&self, i: usize) -> Option<&'a str> {
            require(self.reads, Columns::MEDIA_TYPES, "Tag::media_type", "MEDIA_TYPES");
            let (e, media_type) = (self.e, self.e.tags.media_types[i] as usize);
            // Out of range (the maximum u32 included) means unknown.
            (media_type < e.media_types.ends.len()).then(|| string(&e.media_types, media_type))
        }

        /// Every declared column of tag `i` (the others left unknown and unreadable).
        pub(super) fn values(&self, i: usize) -> TagValues<'a> {
            let r = self.reads;
            TagValues {
                digest: if r.contains(Columns::DIGESTS) { self.digest(i) } else { "" },
                created_at: if r.contains(Columns::CREATED_AT) { self.created_at(i) } else { None },
                pushed_at: if r.contains(Columns::PUSHED_AT) { self.pushed_at(i) } else { None },
                last_pulled_at: if r.contains(Columns::LAST_PULLED_AT) { self.last_pulled_at(i) } else { None },
                size_bytes: if r.contains(Columns::SIZE_BYTES) { self.size_bytes(i) } else { None },
                media_type: if r.contains(Columns::MEDIA_TYPES) { self.media_type(i) } else { None },
                reads: r,
            }
        }
    }

    /// Checks the columnar evaluation of a policy that reads `reads` and gives typed
    /// tags that borrow from it. Columns not declared are not looked at.
    pub fn decode(e: &w::Evaluation, reads: Columns) -> Result<RetentionInput<'_>, String> {
        check_table(&e.tags.names, "tag name")?;
        let t = &e.tags;
        let n = t.names.ends.len();
        let declared = |c: Columns| reads.contains(c);
        if declared(Columns::DIGESTS) {
            check_table(&e.digests, "digest")?;
            column_len("digests", t.digests.len(), n)?;
            check_indices(&t.digests, e.digests.ends.len(), "digest")?;
        }
        if declared(Columns::MEDIA_TYPES) {
            check_table(&e.media_types, "media type")?;
            column_len("media-types", t.media_types.len(), n)?;
        }
        if declared(Columns::CREATED_AT) {
            column_len("created-at", t.created_at.len(), n)?;
        }
        if declared(Columns::PUSHED_AT) {
            column_len("pushed-at", t.pushed_at.len(), n)?;
        }
        if declared(Columns::LAST_PULLED_AT) {
            column_len("last-pulled-at", t.last_pulled_at.len(), n)?;
        }
        if declared(Columns::SIZE_BYTES) {
            column_len("size-bytes", t.size_bytes.len(), n)?;
        }
        let u = &e.untagged;
        let m = u.count as usize;
        if declared(Columns::DIGESTS) {
            column_len("untagged digests", u.digests.len(), m)?;
            check_indices(&u.digests, e.digests.ends.len(), "untagged digest")?;
        }
        if declared(Columns::CREATED_AT) {
            column_len("untagged created-at", u.created_at.len(), m)?;
        }
        if declared(Columns::PUSHED_AT) {
            column_len("untagged pushed-at", u.pushed_at.len(), m)?;
        }
        let untagged = (0..m)
            .map(|i| UntaggedManifest {
                digest: if declared(Columns::DIGESTS) { string(&e.digests, u.digests[i] as usize) } else { "" },
                created_at: if declared(Columns::CREATED_AT) { Timestamp::from_wire(u.created_at[i]) } else { None },
                pushed_at: if declared(Columns::PUSHED_AT) { Timestamp::from_wire(u.pushed_at[i]) } else { None },
                reads,
            })
            .collect();
        Ok(RetentionInput {
            repository: &e.repository,
            now: Timestamp::from_unix_micros(e.now),
            tags: Tags(TagsRepr::Columns(TagColumnsView { e, reads })),
            untagged,
        })
    }

    /// `a == b`, without comparing the reasons' text when both are the same string:
    /// verdicts are mostly clones of a few `&'static str` reasons, and a `memcmp` per
    /// tag showed in profiles at 100k tags.
    fn same_verdict(a: &Verdict, b: &Verdict) -> bool {
        a.action == b.action && ((a.reason.as_ptr() == b.reason.as_ptr() && a.reason.len() == b.reason.len()) || a.reason == b.reason)
    }

    /// Turns verdicts into a rule table and one rule index per position.
    pub fn encode(d: Decisions) -> Result<w::Decisions, String> {
        let mut rules: Vec<w::Rule> = Vec::new();
        // The verdict each rule was first made from: verdicts are mostly clones of a few
        // `&'static str` reasons, so `same_verdict` finds them by address, and the text
        // is compared only for reasons built at run time.
        let mut firsts: Vec<Verdict> = Vec::new();
        let mut index_of = |v: &Verdict| -> Result<u8, String> {
            // Few distinct reasons exist; a linear scan beats hashing here.
            if let Some(i) = firsts.iter().position(|f| same_verdict(f, v)) {
                return Ok(i as u8);
            }
            if rules.len() == MAX_RULES {
                return Err(format!(
                    "more than {MAX_RULES} distinct (action, reason) pairs; build reasons that name a param value once, \
                     in `create` (`tagwarden_plugin_sdk::interned`), not per tag"
                ));
            }
            let action = match v.action {
                Action::Keep => w::Action::Keep,
                Action::Delete => w::Action::Delete,
            };
            rules.push(w::Rule { action, reason: v.reason.to_string() });
            firsts.push(v.clone());
            Ok((rules.len() - 1) as u8)
        };
        let mut tags = Vec::with_capacity(d.tags.len());
        let mut last: Option<(&Verdict, u8)> = None;
        for v in &d.tags {
            let i = match last {
                Some((prev, i)) if same_verdict(prev, v) => i,
                _ => index_of(v)?,
            };
            last = Some((v, i));
            tags.push(i);
        }
        let untagged = d.untagged.iter().map(&mut index_of).collect::<Result<Vec<_>, _>>()?;
        Ok(w::Decisions { rules, tags, untagged })
    }
}

/// Exports a [`RetentionPolicy`] as this component's `retention` interface.
///
/// Use once, at the crate root of a `cdylib` built for `wasm32-wasip2`. Expands to
/// nothing on other targets, so the policy stays unit-testable natively.
#[macro_export]
macro_rules! export_retention {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::bindings::retention::exports::tagwarden::policy as __exports;
            struct __TagwardenRetentionPlugin;
            impl __exports::retention::Guest for __TagwardenRetentionPlugin {
                fn info() -> $crate::bindings::retention::tagwarden::policy::types::PluginInfo {
                    $crate::bindings::retention::tagwarden::policy::types::PluginInfo {
                        name: env!("CARGO_PKG_NAME").into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        description: env!("CARGO_PKG_DESCRIPTION").into(),
                    }
                }
                type Policy = $crate::__retention_wire::PolicyResource<$policy>;
            }
    $crate::bindings::retention::__export_retention_world!(__TagwardenRetentionPlugin with_types_in $crate::bindings::retention);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_covers_every_position() {
        let input = RetentionInput {
            repository: "r",
            now: Timestamp::from_unix_secs(0),
            tags: vec![Tag::new("a", "d"); 3].into(),
            untagged: vec![UntaggedManifest::new("e")],
        };
        let d = Decisions::uniform(&input, Verdict::keep("x"));
        assert_eq!((d.tags.len(), d.untagged.len()), (3, 1));
    }

    #[test]
    fn tag_new_leaves_everything_but_name_and_digest_unknown() {
        let t = Tag::new("v1", "sha256:1");
        assert_eq!(
            (t.name, t.digest(), t.created_at(), t.pushed_at(), t.last_pulled_at(), t.size_bytes(), t.media_type()),
            ("v1", "sha256:1", None, None, None, None, None)
        );
        let at = Timestamp::from_unix_secs(5);
        let t = t.with_created_at(at).with_pushed_at(at).with_last_pulled_at(at).with_size_bytes(7).with_media_type("m");
        assert_eq!(
            (t.created_at(), t.pushed_at(), t.last_pulled_at(), t.size_bytes(), t.media_type()),
            (Some(at), Some(at), Some(at), Some(7), Some("m"))
        );
        assert_eq!(t, t.with_size_bytes(7));
        assert_ne!(t, t.with_size_bytes(8));
    }

    #[test]
    fn encode_interns_reasons_and_decode_round_trips() {
        use crate::bindings::retention::exports::tagwarden::policy::retention as w;
        use crate::bindings::retention::tagwarden::policy::types::StringTable;
        let d = Decisions {
            tags: vec![Verdict::keep("a"), Verdict::delete("b"), Verdict::keep("a"), Verdict::delete("b")],
            untagged: vec![Verdict::delete("b")],
        };
        let e = wire::encode(d).unwrap();
        assert_eq!(e.rules.len(), 2);
        assert_eq!(e.tags, vec![0, 1, 0, 1]);
        assert_eq!(e.untagged, vec![1]);

        let ev = w::Evaluation {
            repository: "g/app".into(),
            now: 5,
            digests: StringTable { data: "sha256:1sha256:2".into(), ends: vec![8, 16] },
            media_types: StringTable { data: String::new(), ends: vec![] },
            tags: w::TagColumns {
                names: StringTable { data: "latestv1".into(), ends: vec![6, 8] },
                digests: vec![1, 0],
                created_at: vec![i64::MIN, 7],
                pushed_at: vec![i64::MIN, i64::MIN],
                last_pulled_at: vec![i64::MIN, i64::MIN],
                size_bytes: vec![-1, 10],
                media_types: vec![u32::MAX, u32::MAX],
            },
            untagged: w::UntaggedColumns { count: 0, digests: vec![], created_at: vec![], pushed_at: vec![] },
        };
        let input = wire::decode(&ev, Columns::ALL).unwrap();
        assert_eq!(input.tags.at(0).name, "latest");
        assert_eq!(input.tags.at(0).digest(), "sha256:2");
        assert_eq!(input.tags.at(0).created_at(), None);
        assert_eq!(input.tags.at(1).created_at(), Some(Timestamp::from_unix_micros(7)));
        assert_eq!(input.tags.at(1).size_bytes(), Some(10));

        assert_eq!(input.tags.iter().map(|t| t.name).collect::<Vec<_>>(), ["latest", "v1"]);
        assert_eq!((&input.tags).into_iter().rev().map(|t| t.name).collect::<Vec<_>>(), ["v1", "latest"]);
        assert_eq!(input.tags.iter().len(), 2);
        assert_eq!(input.tags.get(2), None);

        let mut bad = ev.clone();
        bad.tags.digests = vec![5, 0];
        assert_eq!(wire::decode(&bad, Columns::ALL).unwrap_err(), "digest index 5 out of range (the table has 2 entries)");
        let mut bad = ev.clone();
        bad.untagged = w::UntaggedColumns { count: 1, digests: vec![2], created_at: vec![i64::MIN], pushed_at: vec![i64::MIN] };
        assert!(wire::decode(&bad, Columns::ALL).unwrap_err().starts_with("untagged digest index 2 out of range"));
        let mut bad = ev.clone();
        bad.untagged.count = 1;
        assert_eq!(wire::decode(&bad, Columns::ALL).unwrap_err(), "column untagged digests has 0 entries, expected 1");
        // Offsets past the data, going backwards, or inside a character are refused up
        // front, so reading a tag later cannot fail.
        for (ends, at) in [(vec![6, 10], "6..10"), (vec![6, 5], "6..5"), (vec![1, 9], "0..1"), (vec![7, 9, 9, 8], "9..8")] {
            let mut bad = ev.clone();
            bad.tags.names = StringTable { data: "éatestv1".into(), ends };
            assert_eq!(wire::decode(&bad, Columns::ALL).unwrap_err(), format!("malformed tag name table at offset {at}"));
        }
        // Multi-byte names whose offsets are all boundaries pass.
        let mut good = ev.clone();
        good.tags.names = StringTable { data: "élatest".into(), ends: vec![2, 8] };
        assert_eq!(wire::decode(&good, Columns::ALL).unwrap().tags.at(0).name, "é");
    }

    #[test]
    fn only_declared_columns_are_checked_and_reading_another_panics_naming_it() {
        use crate::bindings::retention::exports::tagwarden::policy::retention as w;
        use crate::bindings::retention::tagwarden::policy::types::StringTable;
        let empty = || StringTable { data: String::new(), ends: vec![] };
        // What the host sends a policy that reads only `created-at`: the other columns empty.
        let ev = w::Evaluation {
            repository: "g/app".into(),
            now: 5,
            digests: empty(),
            media_types: empty(),
            tags: w::TagColumns {
                names: StringTable { data: "ab".into(), ends: vec![1, 2] },
                digests: vec![],
                created_at: vec![3, i64::MIN],
                pushed_at: vec![],
                last_pulled_at: vec![],
                size_bytes: vec![],
                media_types: vec![],
            },
            untagged: w::UntaggedColumns { count: 2, digests: vec![], created_at: vec![1, 2], pushed_at: vec![] },
        };
        let input = wire::decode(&ev, Columns::CREATED_AT).unwrap();
        assert_eq!(input.tags.at(0).created_at(), Some(Timestamp::from_unix_micros(3)));
        assert_eq!(input.untagged.len(), 2);
        assert_eq!(input.untagged[1].created_at(), Some(Timestamp::from_unix_micros(2)));
        let panic = std::panic::catch_unwind(|| input.tags.at(0).digest()).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(message.contains("read Tag::digest") && message.contains("add `Columns::DIGESTS`"), "{message}");
        assert!(std::panic::catch_unwind(|| input.untagged[0].pushed_at()).is_err());
        // A declared column that did not come is refused up front.
        let err = wire::decode(&ev, Columns::CREATED_AT | Columns::PUSHED_AT).unwrap_err();
        assert_eq!(err, "column pushed-at has 0 entries, expected 2");
    }
}
