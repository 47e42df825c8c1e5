//! The host's vocabulary: tags, tag lists, timestamps and retention verdicts.
//!
//! These are plain data. A [`TagList`] carries its own columnar form ([`ListColumns`]),
//! which the runtime copies into the wire format of `wit/policy.wit`; registry backends
//! produce them; recordings serialise them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::bail;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

mod columns;
pub use columns::{ListColumns, StringTable, TagColumns, UntaggedColumns};

/// A point in time, microseconds since the Unix epoch (UTC): the same unit as the WIT
/// contract's `timestamp`, so no conversion loses precision on the way to a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `micros` microseconds after the epoch.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the epoch.
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// The current time from the system clock.
    pub fn now() -> Self {
        Self::from_datetime(OffsetDateTime::now_utc())
    }

    fn from_datetime(t: OffsetDateTime) -> Self {
        Timestamp((t.unix_timestamp_nanos() / 1_000) as i64)
    }

    /// Parses an RFC 3339 timestamp such as `2026-11-20T12:00:00Z`. The date and time
    /// are separated by `T` (or `t`), as RFC 3339 section 5.6 writes it; the space its
    /// note allows is refused, like any other character (the `time` crate alone accepts
    /// any byte there, even NUL).
    pub fn parse_rfc3339(s: &str) -> anyhow::Result<Self> {
        const EXPECTED: &str = "expected e.g. 2026-11-20T12:00:00Z";
        match s.as_bytes().get(10) {
            Some(b'T' | b't') | None => {}
            Some(_) => {
                let shown = crate::untrusted::escape(s);
                bail!("`{shown}` is not an RFC 3339 timestamp (the date and the time must be separated by `T`); {EXPECTED}")
            }
        }
        let t = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| anyhow::anyhow!("`{s}` is not an RFC 3339 timestamp ({e}); expected e.g. 2026-11-20T12:00:00Z"))?;
        Ok(Self::from_datetime(t))
    }

    /// Formats as RFC 3339 in UTC, with sub-second digits only when needed.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t.format(&Rfc3339).unwrap_or_else(|_| format!("@{}us", self.0)),
            Err(_) => format!("@{}us", self.0),
        }
    }

    /// `self + d`, saturating.
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }

    /// `self - d`, saturating.
    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl FromStr for Timestamp {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Self::parse_rfc3339(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// A manifest digest such as `sha256:<64 hex>`, validated on construction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    text: String,
    /// The first 16 hex digits as a number. A digest is a cryptographic hash, so this
    /// is already a well-spread hash of the whole text: interning a tag list's
    /// digests hashes with it instead of reading every digest's text
    /// ([`ListColumns`]). Derived from `text`, so the derived comparisons agree.
    key: u64,
}

impl Digest {
    /// Validates `algorithm:hex` as the OCI spec defines it for sha256 and sha512.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            bail!("`{s}` is not a digest (expected sha256:<64 hex digits>)");
        };
        let want = match algorithm {
            "sha256" => 64,
            "sha512" => 128,
            _ => bail!("`{s}` has unsupported digest algorithm `{algorithm}` (expected sha256 or sha512)"),
        };
        if hex.len() != want || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("`{s}` is not a valid {algorithm} digest (expected {want} lowercase hex digits)");
        }
        Ok(Digest::from_valid(s.to_owned(), hex))
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        let hex = sha256_hex(bytes);
        let text = format!("sha256:{hex}");
        Digest::from_valid(text, &hex)
    }

    fn from_valid(text: String, hex: &str) -> Self {
        let key = u64::from_str_radix(&hex[..16], 16).expect("validated hex digits");
        Digest { text, key }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A 64-bit hash of the digest, free to read (see the field's comment). Equal
    /// digests have equal keys; different digests almost always differ.
    pub fn key(&self) -> u64 {
        self.key
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// A manifest media type. The four that registries serve for images are stored as a
/// small number, so a list of 100k tags holds no copy of them and building its columns
/// reads no string for them ([`ListColumns`]); any other type is kept as given.
/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The OCI image index (multi-arch) media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's image manifest (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's manifest list (multi-arch) media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MediaType {
    /// Index into [`MediaType::KNOWN`].
    Known(u8),
    Other(Box<str>),
}

impl MediaType {
    /// The manifest media types images come as (OCI and Docker, single and multi-arch).
    pub const KNOWN: [&'static str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST];

    pub fn new(s: &str) -> Self {
        Self::known(s).unwrap_or_else(|| MediaType::Other(s.into()))
    }

    fn known(s: &str) -> Option<Self> {
        Self::KNOWN.iter().position(|k| *k == s).map(|i| MediaType::Known(i as u8))
    }

    pub fn as_str(&self) -> &str {
        match self {
            MediaType::Known(i) => Self::KNOWN[usize::from(*i)],
            MediaType::Other(s) => s,
        }
    }
}

impl std::ops::Deref for MediaType {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for MediaType {
    fn from(s: &str) -> Self {
        MediaType::new(s)
    }
}

impl From<String> for MediaType {
    fn from(s: String) -> Self {
        MediaType::known(&s).unwrap_or_else(|| MediaType::Other(s.into_boxed_str()))
    }
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MediaType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MediaType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(MediaType::from)
    }
}

/// The sha256 of `bytes` as 64 lowercase hex digits (plugin files, digests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        use fmt::Write;
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One tag of a repository, with whatever the registry knows about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub name: String,
    pub digest: Digest,
    /// When the image was built (its config's `created`).
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// When the tag was last pushed or moved (GitLab's registry API knows this).
    #[serde(default)]
    pub pushed_at: Option<Timestamp>,
    #[serde(default)]
    pub last_pulled_at: Option<Timestamp>,
    #[serde(default)]
    pub size_bytes: Option<u64>,
    #[serde(default)]
    pub media_type: Option<MediaType>,
}

impl Tag {
    /// A tag with only a name and digest known.
    pub fn new(name: impl Into<String>, digest: Digest) -> Self {
        Tag { name: name.into(), digest, created_at: None, pushed_at: None, last_pulled_at: None, size_bytes: None, media_type: None }
    }
}

/// A manifest no tag points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UntaggedManifest {
    pub digest: Digest,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub pushed_at: Option<Timestamp>,
}

/// A signature, attestation, SBOM or other OCI 1.1 artifact that refers to another manifest
/// of the repository, its *subject*. Retention plugins never see referrers: they follow
/// their subject (kept while it stays, deleted with it), and the deletion planner proves it
/// ([`crate::deletion`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Referrer {
    /// The tag that names it in the fallback tag schema (`sha256-<hex>`, or cosign's
    /// `sha256-<hex>.sig`, `.att`, `.sbom`); `None` for a manifest found through the
    /// referrers API or in a fallback index, which no tag points at.
    #[serde(default)]
    pub tag: Option<String>,
    pub digest: Digest,
    /// The manifest it refers to.
    pub subject: Digest,
    /// The artifact's type (`artifactType`), when the registry said.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// The subject exists but no tag points at it and the list does not hold it (a plain
    /// registry cannot list untagged manifests): nothing decides on the subject, so it
    /// stays, and with it this referrer. False when the subject is in the list, or gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub subject_untagged: bool,
}

/// The cosign suffixes of the fallback tag schema: signatures, attestations, SBOMs.
const FALLBACK_TAG_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

/// The subject a tag names in the referrers fallback tag schema: `sha256-<64 hex>` (OCI
/// distribution 1.1), optionally followed by cosign's `.sig`, `.att` or `.sbom`. `None`
/// for any other name.
pub fn fallback_tag_subject(name: &str) -> Option<Digest> {
    let rest = name.strip_prefix("sha256-")?;
    let hex = FALLBACK_TAG_SUFFIXES.iter().find_map(|s| rest.strip_suffix(s)).unwrap_or(rest);
    if hex.len() != 64 {
        return None;
    }
    Digest::parse(&format!("sha256:{hex}")).ok()
}

/// Every tag and untagged manifest of one repository, tags sorted by name, with their
/// columnar form ([`ListColumns`]) built alongside.
#[derive(Debug, Clone, Default)]
pub struct TagList {
    pub repository: String,
    tags: Vec<Tag>,
    untagged: Vec<UntaggedManifest>,
    /// Built with the list; after a change, built again on first use (a simulated pass
    /// removes tags one deletion at a time and must not pay a rebuild for each).
    columns: std::sync::OnceLock<ListColumns>,
    /// For each image index (multi-arch image) among the list's manifests, and each
    /// index nested in one, the manifests it references. The deletion planner never
    /// deletes a manifest that an index which stays references.
    index_children: BTreeMap<Digest, Vec<Digest>>,
    /// Artifacts that follow a subject ([`Referrer`]), sorted by digest then tag; not in
    /// `tags` or `untagged`, so no plugin sees them.
    referrers: Vec<Referrer>,
}

/// Two lists are equal when their contents are: the columns follow from them.
impl PartialEq for TagList {
    fn eq(&self, other: &Self) -> bool {
        (&self.repository, &self.tags, &self.untagged, &self.index_children, &self.referrers)
            == (&other.repository, &other.tags, &other.untagged, &other.index_children, &other.referrers)
    }
}

impl Eq for TagList {}

impl TagList {
    /// Builds a tag list, sorting tags by name (byte-wise) as the contract promises
    /// plugins, and rejecting duplicate names.
    pub fn new(repository: impl Into<String>, mut tags: Vec<Tag>, untagged: Vec<UntaggedManifest>) -> anyhow::Result<Self> {
        let repository = repository.into();
        tags.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = tags.windows(2).find(|w| w[0].name == w[1].name) {
            bail!("repository {repository}: tag `{}` is listed twice", w[0].name);
        }
        let columns = ListColumns::build(&tags, &untagged).into();
        Ok(TagList { repository, tags, untagged, columns, index_children: BTreeMap::new(), referrers: Vec::new() })
    }

    /// The same list, knowing which manifests each image index references (see
    /// [`TagList::index_children`]). Indexes without children are left out.
    pub fn with_index_children(mut self, children: impl IntoIterator<Item = (Digest, Vec<Digest>)>) -> Self {
        self.index_children = children.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        self
    }

    /// The manifests each image index of the list references, by index digest. Only
    /// indexes appear; a source that cannot tell (an old recording) gives none.
    pub fn index_children(&self) -> &BTreeMap<Digest, Vec<Digest>> {
        &self.index_children
    }

    /// The same list with `referrers` added to those it has (duplicates, same digest and
    /// tag, once).
    pub fn with_referrers(mut self, referrers: impl IntoIterator<Item = Referrer>) -> Self {
        self.referrers.extend(referrers);
        self.referrers.sort_by(|a, b| (&a.digest, &a.tag).cmp(&(&b.digest, &b.tag)));
        self.referrers.dedup_by(|a, b| (&a.digest, &a.tag) == (&b.digest, &b.tag));
        self
    }

    /// The same list with the tags of the referrers fallback tag schema
    /// ([`fallback_tag_subject`]) taken out of `tags` and made referrers of the subject they
    /// name; so is every manifest a fallback index references (OCI's fallback tag points at
    /// an index of the subject's referrers). Call it after [`TagList::with_index_children`].
    pub fn split_referrer_tags(mut self) -> Self {
        if !self.tags.iter().any(|t| t.name.starts_with("sha256-")) {
            return self;
        }
        let mut found = Vec::new();
        self.tags.retain(|t| match fallback_tag_subject(&t.name) {
            Some(subject) => {
                found.push(Referrer {
                    tag: Some(t.name.clone()),
                    digest: t.digest.clone(),
                    subject,
                    artifact_type: None,
                    subject_untagged: false,
                });
                false
            }
            None => true,
        });
        if found.is_empty() {
            return self;
        }
        let listed: Vec<Referrer> = found
            .iter()
            .flat_map(|r| {
                self.index_children.get(&r.digest).into_iter().flatten().map(|child| Referrer {
                    tag: None,
                    digest: child.clone(),
                    subject: r.subject.clone(),
                    artifact_type: None,
                    subject_untagged: false,
                })
            })
            .collect();
        self.columns = Default::default();
        self.with_referrers(found.into_iter().chain(listed))
    }

    /// Artifacts that follow a subject, sorted by digest: not shown to plugins.
    pub fn referrers(&self) -> &[Referrer] {
        &self.referrers
    }

    /// Marks the referrers whose subject is one of `subjects` as having an untagged subject
    /// (see [`Referrer::subject_untagged`]).
    pub fn mark_untagged_subjects(&mut self, subjects: &std::collections::HashSet<Digest>) {
        for r in &mut self.referrers {
            r.subject_untagged |= subjects.contains(&r.subject);
        }
    }

    /// Every manifest of the list: tagged, untagged, referrers, and those an image index
    /// of it references.
    pub fn manifest_digests(&self) -> std::collections::HashSet<&Digest> {
        self.tags
            .iter()
            .map(|t| &t.digest)
            .chain(self.untagged.iter().map(|u| &u.digest))
            .chain(self.referrers.iter().map(|r| &r.digest))
            .chain(self.index_children.values().flatten())
            .collect()
    }

    /// The tags, sorted by name.
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The manifests no tag points at.
    pub fn untagged(&self) -> &[UntaggedManifest] {
        &self.untagged
    }

    /// The same list column by column, as plugins receive it.
    pub fn columns(&self) -> &ListColumns {
        self.columns.get_or_init(|| ListColumns::build(&self.tags, &self.untagged))
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.untagged.is_empty()
    }

    /// A copy without the tags, untagged manifests and referrers the predicates name by
    /// position, and without the image indexes `drop_index` names: one O(n) copy, however many were
    /// removed (the recordings backend keeps its deletions as positions and applies them
    /// here only when a list is asked for). The order is kept, so nothing is sorted again;
    /// the columns are built on first use.
    pub fn without(
        &self,
        drop_tag: impl Fn(usize) -> bool,
        drop_untagged: impl Fn(usize) -> bool,
        drop_index: impl Fn(&Digest) -> bool,
        drop_referrer: impl Fn(usize) -> bool,
    ) -> TagList {
        TagList {
            repository: self.repository.clone(),
            tags: self.tags.iter().enumerate().filter(|(i, _)| !drop_tag(*i)).map(|(_, t)| t.clone()).collect(),
            untagged: self.untagged.iter().enumerate().filter(|(i, _)| !drop_untagged(*i)).map(|(_, u)| u.clone()).collect(),
            columns: Default::default(),
            index_children: self.index_children.iter().filter(|(d, _)| !drop_index(d)).map(|(d, c)| (d.clone(), c.clone())).collect(),
            referrers: self.referrers.iter().enumerate().filter(|(k, _)| !drop_referrer(*k)).map(|(_, r)| r.clone()).collect(),
        }
    }

    /// Removes the named tags (a deletion applied to an in-memory copy).
    pub fn remove_tags(&mut self, names: &std::collections::HashSet<&str>) {
        self.tags.retain(|t| !names.contains(t.name.as_str()));
        self.referrers.retain(|r| !r.tag.as_deref().is_some_and(|t| names.contains(t)));
        self.columns = Default::default();
    }

    /// Removes every tag and untagged manifest on `digest`.
    pub fn remove_digest(&mut self, digest: &Digest) {
        self.tags.retain(|t| &t.digest != digest);
        self.untagged.retain(|u| &u.digest != digest);
        self.referrers.retain(|r| &r.digest != digest);
        self.index_children.remove(digest);
        self.columns = Default::default();
    }
}

/// Keep or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        })
    }
}

/// One (action, reason) pair that a plugin gave; verdicts refer to it by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub reason: String,
}

/// A retention plugin's validated answer for one [`TagList`]: exactly one rule index
/// per tag and per untagged manifest, in the list's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionDecisions {
    rules: Vec<Rule>,
    tags: Vec<u8>,
    untagged: Vec<u8>,
}

/// Longest reason a plugin may give for a rule, in bytes: a reason names the rule and
/// why it applied, in one line of a table (`wit/policy.wit`).
pub const MAX_REASON_BYTES: usize = 1024;

impl RetentionDecisions {
    /// Validates a raw answer against the list it answers. Errors describe what is
    /// wrong; there is no partially valid answer.
    pub fn validate(list: &TagList, rules: Vec<Rule>, tags: Vec<u8>, untagged: Vec<u8>) -> anyhow::Result<Self> {
        if rules.len() > 256 {
            bail!("answer has {} rules; at most 256 are allowed", rules.len());
        }
        if let Some((i, rule)) = rules.iter().enumerate().find(|(_, r)| r.reason.len() > MAX_REASON_BYTES) {
            bail!("rule {i}'s reason is {} bytes long; at most {MAX_REASON_BYTES} are allowed", rule.reason.len());
        }
        if tags.len() != list.tags.len() {
            bail!("answer has {} tag verdicts for {} tags", tags.len(), list.tags.len());
        }
        if untagged.len() != list.untagged().len() {
            bail!("answer has {} untagged verdicts for {} untagged manifests", untagged.len(), list.untagged().len());
        }
        if let Some((i, &r)) = tags.iter().chain(untagged.iter()).enumerate().find(|&(_, &r)| usize::from(r) >= rules.len()) {
            bail!("verdict {i} refers to rule {r}, but only {} rules were given", rules.len());
        }
        Ok(RetentionDecisions { rules, tags, untagged })
    }

    /// The verdict for tag `i` of the evaluated list.
    pub fn tag(&self, i: usize) -> &Rule {
        &self.rules[usize::from(self.tags[i])]
    }

    /// The verdict for untagged manifest `i`.
    pub fn untagged(&self, i: usize) -> &Rule {
        &self.rules[usize::from(self.untagged[i])]
    }

    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    pub fn untagged_count(&self) -> usize {
        self.untagged.len()
    }

    /// How many tags the plugin wants deleted.
    pub fn tags_to_delete(&self) -> usize {
        self.tags.iter().filter(|&&r| self.rules[usize::from(r)].action == Action::Delete).count()
    }
}

/// How a failed registry operation is classified, for retries and backoff plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    /// Connection reset, 5xx, or another error that may pass.
    Transient,
    /// The registry asked to slow down (429).
    RateLimited,
    /// The thing operated on does not exist (404).
    NotFound,
    /// Credentials missing, wrong, or lacking a permission (401, 403).
    Unauthorized,
    /// No answer in time.
    Timeout,
    /// Retrying cannot help (e.g. deletes disabled: 405; malformed request: 400).
    Permanent,
}

impl ErrorClass {
    /// The name stored in the state and shown to operators (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::RateLimited => "rate-limited",
            ErrorClass::NotFound => "not-found",
            ErrorClass::Unauthorized => "unauthorized",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Permanent => "permanent",
        }
    }

    /// Whether retrying the same request soon may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::RateLimited | ErrorClass::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap()
    }

    #[test]
    fn timestamps_round_trip_rfc3339_with_microseconds() {
        let t = Timestamp::parse_rfc3339("2026-11-20T12:00:00.123456Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-20T12:00:00.123456Z");
        assert_eq!(Timestamp::parse_rfc3339("1970-01-01T00:00:01Z").unwrap().unix_micros(), 1_000_000);
        assert_eq!(Timestamp::parse_rfc3339("2026-11-20t12:00:00z").unwrap(), Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap());
        for bad in ["2026-10-01X12:00:00Z", "2026-10-01\u{0}12:00:00Z", "2026-10-01 12:00:00Z", "2026-10-01é2:00:00Z"] {
            let err = Timestamp::parse_rfc3339(bad).unwrap_err().to_string();
            assert!(err.contains("separated by `T`"), "{bad:?}: {err}");
        }
        let err = Timestamp::parse_rfc3339("yesterday").unwrap_err().to_string();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn digest_validation_names_the_problem() {
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(Digest::parse("sha256:abc").unwrap_err().to_string().contains("64 lowercase hex"));
        assert!(Digest::parse("md5:abc").unwrap_err().to_string().contains("unsupported"));
        assert!(Digest::parse("latest").is_err());
        assert_eq!(Digest::sha256_of(b"").as_str(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn tag_lists_are_sorted_and_reject_duplicates() {
        let list = TagList::new("r", vec![Tag::new("b", digest(1)), Tag::new("a", digest(2))], vec![]).unwrap();
        assert_eq!(list.tags().iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let err = TagList::new("r", vec![Tag::new("a", digest(1)), Tag::new("a", digest(2))], vec![]).unwrap_err();
        assert!(err.to_string().contains("listed twice"));
    }

    #[test]
    fn decisions_reject_every_malformed_shape() {
        let list = TagList::new("r", vec![Tag::new("a", digest(1)), Tag::new("b", digest(2))], vec![]).unwrap();
        let rules = || vec![Rule { action: Action::Keep, reason: "k".into() }];
        assert!(RetentionDecisions::validate(&list, rules(), vec![0, 0], vec![]).is_ok());
        assert!(
            RetentionDecisions::validate(&list, rules(), vec![0], vec![]).unwrap_err().to_string().contains("1 tag verdicts for 2 tags")
        );
        assert!(RetentionDecisions::validate(&list, rules(), vec![0, 0, 0], vec![]).is_err());
        assert!(RetentionDecisions::validate(&list, rules(), vec![0, 1], vec![]).unwrap_err().to_string().contains("rule 1"));
        assert!(RetentionDecisions::validate(&list, rules(), vec![0, 0], vec![0]).unwrap_err().to_string().contains("untagged"));
    }
}
