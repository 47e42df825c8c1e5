//! Where tags come from and where deletions go: a real registry, or recordings.
//!
//! Both backends go through the same pass code ([`crate::pass`]), so a simulation over
//! recordings exercises exactly what a real pass does, at any scale, with no registry.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;

use crate::model::{Digest, ErrorClass, TagList};
use crate::recording::Recording;
use crate::registry::{DeleteOutcome, ManifestContent, RegistryClient, RegistryError, RequestLine, TagDeleteOutcome};

/// A source of tag lists and a target for deletions.
pub enum Backend {
    /// A registry spoken to over HTTP.
    Oci(RegistryClient),
    /// Recorded tag lists, read on demand; deletions change the backend's view only.
    Recordings(RecordingBackend),
}

impl Backend {
    /// A name for reports: the registry URL or the recordings directory.
    pub fn label(&self) -> String {
        match self {
            Backend::Oci(c) => c.base_url().to_string(),
            Backend::Recordings(r) => format!("recordings in {}", r.origin),
        }
    }

    /// Every repository the backend knows.
    pub async fn repositories(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Backend::Oci(c) => Ok(c.catalog().await?),
            Backend::Recordings(r) => Ok(r.repositories()),
        }
    }

    /// The repository's tags with digests and times; `None` when it does not exist.
    pub async fn tag_list(&self, repo: &str, progress: &(dyn Fn(usize, usize) + Send + Sync)) -> Result<Option<TagList>, RegistryError> {
        match self {
            Backend::Oci(c) => c.tag_list(repo, progress).await,
            Backend::Recordings(r) => r.current(repo),
        }
    }

    /// The repository's tags as they are now, except those in `skip`, for the re-check
    /// before deleting (see [`crate::registry::RegistryClient::recheck`]); `None` when the
    /// repository is gone.
    pub async fn recheck(&self, repo: &str, skip: &HashSet<&str>) -> Result<Option<TagList>, RegistryError> {
        match self {
            Backend::Oci(c) => c.recheck(repo, skip).await,
            Backend::Recordings(r) => Ok(r.current(repo)?.map(|mut list| {
                list.remove_tags(skip);
                list
            })),
        }
    }

    /// Whether the repository still has manifest `digest`: how an interrupted or ambiguous
    /// deletion is settled.
    pub async fn manifest_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        match self {
            Backend::Oci(c) => c.manifest_exists(repo, digest).await,
            Backend::Recordings(r) => r.with_loaded(repo, |loaded| loaded.is_some_and(|l| l.has_digest(digest))),
        }
    }

    /// Whether [`Backend::manifest`] can ever return a manifest: recordings hold none, so a
    /// pass over them does not look for copies to keep.
    pub fn serves_manifests(&self) -> bool {
        matches!(self, Backend::Oci(_))
    }

    /// Says a pass is done with `repo`. Recordings drop its list from memory (keeping its
    /// deletions), so that the lists kept are those of passes under way: kept by recency
    /// alone, a 1,000,000-tag list being decided was pushed out by the small ones finished
    /// meanwhile and parsed again for its re-check and again while deleting.
    pub fn release(&self, repo: &str) {
        if let Backend::Recordings(r) = self {
            r.release(repo);
        }
    }

    /// Whether a deletion here outlives the process: a registry's does; recordings change
    /// only the backend's view in memory. The audit log is written before a deletion that
    /// outlives the process and may be written after one that does not (see
    /// `crate::pass::execute`).
    pub fn deletions_outlive_process(&self) -> bool {
        matches!(self, Backend::Oci(_))
    }

    /// Manifest `digest` as the registry serves it, kept before deleting it for a later
    /// restore. Recordings hold no manifests: `None`.
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestContent>, RegistryError> {
        match self {
            Backend::Oci(c) => c.manifest(repo, digest).await,
            Backend::Recordings(_) => Ok(None),
        }
    }

    /// Deletes a manifest and with it every tag on it.
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<DeleteOutcome, RegistryError> {
        match self {
            Backend::Oci(c) => c.delete_manifest(repo, digest).await,
            Backend::Recordings(r) => r.with_loaded(repo, |loaded| {
                if loaded.is_some_and(|l| l.remove_digest(digest)) { DeleteOutcome::Deleted } else { DeleteOutcome::AlreadyGone }
            }),
        }
    }

    /// Deletes one tag, leaving its manifest (OCI 1.1). Recordings behave like a
    /// registry that supports it.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<TagDeleteOutcome, RegistryError> {
        match self {
            Backend::Oci(c) => c.delete_tag(repo, tag).await,
            Backend::Recordings(r) => r.with_loaded(repo, |loaded| {
                if loaded.is_some_and(|l| l.remove_tag(tag)) { TagDeleteOutcome::Deleted } else { TagDeleteOutcome::AlreadyGone }
            }),
        }
    }

    /// The registry client, for operations only real registries have (the dummy-manifest
    /// method of removing a tag).
    pub fn registry(&self) -> Option<&RegistryClient> {
        match self {
            Backend::Oci(c) => Some(c),
            Backend::Recordings(_) => None,
        }
    }

    /// The current state of a recorded repository (tests and simulations read it back).
    pub fn recorded(&self, repo: &str) -> Option<TagList> {
        match self {
            Backend::Recordings(r) => r.current(repo).ok().flatten(),
            Backend::Oci(_) => None,
        }
    }
}

/// Recorded tag lists, read on demand; deletions change the backend's view only.
///
/// Built for what-ifs at scale (10,000 recordings, or one of 1,000,000 tags): only an index
/// of repository → file is held from the start, each list is read when a pass asks for it,
/// and at most a few recently read lists stay in memory ([`KEEP_LOADED`],
/// [`KEEP_LOADED_TAGS`]). Deletions are kept apart from the lists, as positions in the
/// recording (a bit per tag, so kept for every repository, loaded or not), and applied
/// when a list is asked for: a deletion costs a lookup, whatever the repository's size.
///
/// Bad recordings: the start-up scan reads each file's head only (`format`, `repository`)
/// and refuses, before anything runs, a file that is not a regular file, is over the size
/// limit, is not a recording, or names a repository another file names. Everything else
/// (tags, digests, timestamps, the JSON after the head) is checked when the repository's
/// pass reads it: that repository fails with the file, position and field, and the others
/// go on, as a registry's broken repository would.
pub struct RecordingBackend {
    origin: String,
    /// Every repository and where its recording is.
    index: BTreeMap<String, Source>,
    state: Mutex<State>,
}

/// Lists kept in memory after they were read, most recently used first to stay. A pass
/// reads its list, re-checks it and deletes from it: the lists of the passes under way
/// stay loaded as long as fewer than this many run at once; past that they are read again.
const KEEP_LOADED: usize = 16;

/// Tags kept in memory in loaded lists beyond the most recent one (which always stays).
const KEEP_LOADED_TAGS: usize = 2_000_000;

enum Source {
    File(PathBuf),
    Memory(Box<TagList>),
}

#[derive(Default)]
struct State {
    /// Deletions from repositories not loaded now.
    removed: HashMap<String, Removed>,
    /// Lists read recently, least recently used first.
    loaded: Vec<Loaded>,
}

/// Deletions from one recorded repository, by position in its recording's lists.
#[derive(Default)]
struct Removed {
    tags: Bits,
    untagged: Bits,
    /// Image indexes deleted (their `indexes` entry is gone with them).
    indexes: HashSet<Digest>,
    /// Referrers removed, by position in the list's referrers (they are few: no index).
    referrers: HashSet<usize>,
}

impl Removed {
    fn is_empty(&self) -> bool {
        !self.tags.any() && !self.untagged.any() && self.indexes.is_empty() && self.referrers.is_empty()
    }
}

/// A growable bit set.
#[derive(Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: usize) {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn any(&self) -> bool {
        self.0.iter().any(|w| *w != 0)
    }
}

/// One repository's recording in memory, with its deletions.
pub(crate) struct Loaded {
    repository: String,
    /// As recorded (tags sorted by name): positions refer to it.
    list: TagList,
    removed: Removed,
    /// (digest key, position) sorted, for deletions by digest: tag `i` is position `i`,
    /// untagged manifest `j` is `tags + j`. Built on the first deletion.
    by_digest: Vec<(u64, u32)>,
}

impl Loaded {
    fn new(list: TagList, removed: Removed) -> Self {
        Loaded { repository: list.repository.clone(), list, removed, by_digest: Vec::new() }
    }

    /// The list as it is now: the recording without what was deleted.
    fn current(&self) -> TagList {
        if self.removed.is_empty() {
            return self.list.clone();
        }
        let r = &self.removed;
        self.list.without(|i| r.tags.get(i), |j| r.untagged.get(j), |d| r.indexes.contains(d), |k| r.referrers.contains(&k))
    }

    fn digest_at(&self, pos: usize) -> &Digest {
        let tags = self.list.tags();
        if pos < tags.len() { &tags[pos].digest } else { &self.list.untagged()[pos - tags.len()].digest }
    }

    fn is_removed(&self, pos: usize) -> bool {
        let tags = self.list.tags().len();
        if pos < tags { self.removed.tags.get(pos) } else { self.removed.untagged.get(pos - tags) }
    }

    /// Positions of the tags and untagged manifests on `digest` not deleted yet.
    fn live_positions(&mut self, digest: &Digest) -> Vec<usize> {
        if self.by_digest.is_empty() {
            let n = self.list.tags().len() + self.list.untagged().len();
            self.by_digest = (0..n).map(|p| (self.digest_at(p).key(), p as u32)).collect();
            self.by_digest.sort_unstable();
        }
        let start = self.by_digest.partition_point(|(k, _)| *k < digest.key());
        self.by_digest[start..]
            .iter()
            .take_while(|(k, _)| *k == digest.key())
            .map(|(_, p)| *p as usize)
            // Keys are a prefix of the digest: equal keys need not be equal digests.
            .filter(|p| self.digest_at(*p) == digest && !self.is_removed(*p))
            .collect()
    }

    fn has_digest(&mut self, digest: &Digest) -> bool {
        !self.live_positions(digest).is_empty() || !self.live_referrers(|r| &r.digest == digest).is_empty()
    }

    /// Positions of referrers not removed yet that `matches`.
    fn live_referrers(&self, matches: impl Fn(&crate::model::Referrer) -> bool) -> Vec<usize> {
        let referrers = self.list.referrers();
        (0..referrers.len()).filter(|k| !self.removed.referrers.contains(k) && matches(&referrers[*k])).collect()
    }

    /// Deletes manifest `digest` and every tag on it; `false` if nothing was there.
    fn remove_digest(&mut self, digest: &Digest) -> bool {
        let referrers = self.live_referrers(|r| &r.digest == digest);
        self.removed.referrers.extend(referrers.iter().copied());
        let live = self.live_positions(digest);
        let tags = self.list.tags().len();
        for &p in &live {
            if p < tags { self.removed.tags.set(p) } else { self.removed.untagged.set(p - tags) }
        }
        if self.list.index_children().contains_key(digest) {
            self.removed.indexes.insert(digest.clone());
        }
        !live.is_empty() || !referrers.is_empty()
    }

    /// Deletes tag `name`, leaving its manifest; `false` if it was not there.
    fn remove_tag(&mut self, name: &str) -> bool {
        let referrers = self.live_referrers(|r| r.tag.as_deref() == Some(name));
        if !referrers.is_empty() {
            self.removed.referrers.extend(referrers);
            return true;
        }
        match self.list.tags().binary_search_by(|t| t.name.as_str().cmp(name)) {
            Ok(i) if !self.removed.tags.get(i) => {
                self.removed.tags.set(i);
                true
            }
            _ => false,
        }
    }
}

impl RecordingBackend {
    /// Indexes every `*.json` recording in `dir` (or one file): reads each file's head
    /// only; the lists are read when asked for.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        if path.is_dir() {
            for entry in std::fs::read_dir(path).with_context(|| format!("cannot read recordings directory {}", path.display()))? {
                let p = entry?.path();
                if p.extension().is_some_and(|e| e == "json") {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut index: BTreeMap<String, Source> = BTreeMap::new();
        for f in files {
            let repository = read_repository(&f)?;
            if let Some(Source::File(previous)) = index.get(&repository) {
                anyhow::bail!("{} and {} are both recordings of repository {repository}; keep one", previous.display(), f.display());
            }
            index.insert(repository, Source::File(f));
        }
        Ok(RecordingBackend { origin: path.display().to_string(), index, state: Mutex::default() })
    }

    /// Serves the given lists.
    pub fn from_lists(origin: impl Into<String>, lists: impl IntoIterator<Item = TagList>) -> Self {
        RecordingBackend {
            origin: origin.into(),
            index: lists.into_iter().map(|l| (l.repository.clone(), Source::Memory(Box::new(l)))).collect(),
            state: Mutex::default(),
        }
    }

    fn repositories(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }

    fn release(&self, repo: &str) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = state.loaded.iter().position(|l| l.repository == repo) {
            let l = state.loaded.remove(i);
            if !l.removed.is_empty() {
                state.removed.insert(l.repository, l.removed);
            }
        }
    }

    /// The repository's list as it is now; `None` when there is no recording of it.
    fn current(&self, repo: &str) -> Result<Option<TagList>, RegistryError> {
        self.with_loaded(repo, |l| l.map(|l| l.current()))
    }

    /// Runs `f` on the repository's loaded recording (read first if needed), `None` when
    /// there is none.
    fn with_loaded<T>(&self, repo: &str, f: impl FnOnce(Option<&mut Loaded>) -> T) -> Result<T, RegistryError> {
        let Some(source) = self.index.get(repo) else { return Ok(f(None)) };
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = state.loaded.iter().position(|l| l.repository == repo) {
                let l = state.loaded.remove(i);
                state.loaded.push(l);
                return Ok(f(state.loaded.last_mut()));
            }
        }
        // Read outside the lock: other passes go on meanwhile.
        let list = self.read(repo, source)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.loaded.iter().any(|l| l.repository == repo) {
            let removed = state.removed.remove(repo).unwrap_or_default();
            state.loaded.push(Loaded::new(list, removed));
            evict(&mut state);
        }
        let i = state.loaded.iter().position(|l| l.repository == repo).expect("just loaded");
        Ok(f(Some(&mut state.loaded[i])))
    }

    fn read(&self, repo: &str, source: &Source) -> Result<TagList, RegistryError> {
        let path = match source {
            Source::Memory(list) => return Ok(TagList::clone(list)),
            Source::File(path) => path,
        };
        let error = |message: String| RegistryError {
            registry: self.origin.clone(),
            repository: Some(repo.to_owned()),
            request: Box::new(RequestLine { method: "READ".into(), url: path.display().to_string() }),
            status: None,
            code: None,
            message,
            class: ErrorClass::Permanent,
            retry_after_secs: None,
        };
        let recording = Recording::read(path).map_err(|e| error(format!("{e:#}; fix or remove the file")))?;
        if recording.list.repository != repo {
            return Err(error(format!(
                "the recording now names repository {}; it named {repo} when tagwarden started (restart to read it anew)",
                recording.list.repository
            )));
        }
        Ok(recording.list)
    }
}

/// Drops least recently used lists beyond [`KEEP_LOADED`] / [`KEEP_LOADED_TAGS`], keeping
/// their deletions; the most recent list always stays.
fn evict(state: &mut State) {
    let size = |l: &Loaded| l.list.tags().len() + l.list.untagged().len();
    let mut tags: usize = state.loaded.iter().map(size).sum();
    while state.loaded.len() > 1 && (state.loaded.len() > KEEP_LOADED || tags > KEEP_LOADED_TAGS) {
        let l = state.loaded.remove(0);
        tags -= size(&l);
        if !l.removed.is_empty() {
            state.removed.insert(l.repository, l.removed);
        }
    }
}

/// The repository a recording names, read from the file's head: `format` and `repository`
/// (which `tagwarden record` writes first), so a start-up scan of 10,000 recordings reads
/// kilobytes, not gigabytes. The rest is checked when the list is read ([`Recording::read`]).
fn read_repository(path: &Path) -> anyhow::Result<String> {
    use crate::recording::{FORMAT_V1, FORMAT_V2};
    use std::io::BufRead;

    let raise = format!("set {} to a larger number of MiB to read it", crate::input::limits::RECORDING_MIB_ENV);
    let (file, _) = crate::input::open_regular(path, "recording", crate::input::recording_limit()?, &raise)?;
    let invalid = |what: String| anyhow::anyhow!("invalid recording {}: {what}", path.display());
    let mut reader = std::io::BufReader::with_capacity(16 << 10, file);
    loop {
        let buf = reader.fill_buf().with_context(|| format!("cannot read recording {}", path.display()))?;
        let blank = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        match buf.get(blank) {
            Some(b'{') => break,
            Some(_) | None if blank == buf.len() && !buf.is_empty() => reader.consume(blank),
            _ => {
                return Err(invalid(format!(
                    "not a tagwarden recording: it does not start with a JSON object; a recording looks like \
                     {{\"format\": \"{FORMAT_V1}\", \"repository\": …, \"recorded_at\": …, \"tags\": […]}} (docs/recording-format.md)"
                )));
            }
        }
    }
    let mut head = Head::default();
    let mut de = serde_json::Deserializer::from_reader(reader);
    match serde::Deserializer::deserialize_map(&mut de, HeadVisitor(&mut head)) {
        Err(e) if !(e.to_string().starts_with(HEAD_READ) && head.repository.is_some()) => {
            let msg = e.to_string();
            let msg = msg.rfind(" at line ").map_or(msg.as_str(), |i| &msg[..i]);
            return Err(invalid(format!("{}:{}: {msg}", e.line(), e.column())));
        }
        _ => {}
    }
    let format = head.format.ok_or_else(|| invalid("missing field `format`".into()))?;
    if format != FORMAT_V1 && format != FORMAT_V2 {
        return Err(invalid(format!("`format` is `{format}`; this tagwarden reads `{FORMAT_V1}` and `{FORMAT_V2}`")));
    }
    match head.repository {
        Some(r) if !r.is_empty() => Ok(r),
        Some(_) => Err(invalid("`repository` is empty; expected a repository path such as `group/app`".into())),
        None => Err(invalid("missing field `repository`".into())),
    }
}

/// What [`HeadVisitor`] stops with once it has the head (not an error of the file).
const HEAD_READ: &str = "tagwarden: recording head read";

#[derive(Default)]
struct Head {
    format: Option<String>,
    repository: Option<String>,
}

struct HeadVisitor<'a>(&'a mut Head);

impl<'de> serde::de::Visitor<'de> for HeadVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a tagwarden recording (a JSON object)")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "format" => self.0.format = Some(map.next_value()?),
                "repository" => self.0.repository = Some(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
            if self.0.format.is_some() && self.0.repository.is_some() {
                // Stop reading: the rest is checked when the list is read.
                return Err(serde::de::Error::custom(HEAD_READ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Tag, Timestamp, UntaggedManifest};

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn write(dir: &Path, file: &str, list: TagList) {
        let recorded_at = Timestamp::parse_rfc3339("2026-11-20T12:00:00Z").unwrap();
        Recording { recorded_at, list }.write(&dir.join(file)).unwrap();
    }

    fn names(list: &TagList) -> Vec<&str> {
        list.tags().iter().map(|t| t.name.as_str()).collect()
    }

    /// Recordings of `app` and of more other repositories than the lists kept in memory.
    fn app_and_others(dir: &Path) -> Backend {
        write(dir, "app.json", app());
        for i in 0..KEEP_LOADED + 2 {
            write(dir, &format!("other-{i:02}.json"), TagList::new(format!("other/{i:02}"), vec![Tag::new("x", d(9))], vec![]).unwrap());
        }
        Backend::Recordings(RecordingBackend::load(dir).unwrap())
    }

    /// `app`: a, b on digest 1; c on 2; untagged 3 and (index) 4 over 3.
    fn app() -> TagList {
        let untagged = |n| UntaggedManifest { digest: d(n), created_at: None, pushed_at: None };
        TagList::new("group/app", vec![Tag::new("c", d(2)), Tag::new("a", d(1)), Tag::new("b", d(1))], vec![untagged(3), untagged(4)])
            .unwrap()
            .with_index_children([(d(4), vec![d(3)])])
    }

    #[tokio::test]
    async fn deletions_apply_to_the_served_lists_and_survive_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let backend = app_and_others(dir.path());
        assert_eq!(backend.repositories().await.unwrap().len(), KEEP_LOADED + 3);
        let none = |_, _| {};

        assert_eq!(backend.delete_manifest("group/app", &d(1)).await.unwrap(), DeleteOutcome::Deleted);
        assert_eq!(backend.delete_manifest("group/app", &d(1)).await.unwrap(), DeleteOutcome::AlreadyGone, "deleted once");
        assert_eq!(backend.delete_manifest("group/app", &d(4)).await.unwrap(), DeleteOutcome::Deleted, "an untagged index");
        assert_eq!(backend.delete_tag("group/app", "c").await.unwrap(), TagDeleteOutcome::Deleted);
        assert_eq!(backend.delete_tag("group/app", "c").await.unwrap(), TagDeleteOutcome::AlreadyGone);
        assert!(!backend.manifest_exists("group/app", &d(1)).await.unwrap());
        assert!(backend.manifest_exists("group/app", &d(3)).await.unwrap());
        assert_eq!(backend.delete_manifest("no/such", &d(1)).await.unwrap(), DeleteOutcome::AlreadyGone);

        // Every other repository read: `group/app` is evicted, its deletions kept.
        for i in 0..KEEP_LOADED + 2 {
            let list = backend.tag_list(&format!("other/{i:02}"), &none).await.unwrap().unwrap();
            assert_eq!(names(&list), ["x"]);
        }
        let RecordingBackend { state, .. } = match &backend {
            Backend::Recordings(r) => r,
            Backend::Oci(_) => unreachable!(),
        };
        assert!(!state.lock().unwrap().loaded.iter().any(|l| l.repository == "group/app"), "evicted");

        let now = backend.tag_list("group/app", &none).await.unwrap().unwrap();
        assert!(names(&now).is_empty(), "{now:?}");
        assert_eq!(now.untagged().iter().map(|u| &u.digest).collect::<Vec<_>>(), [&d(3)]);
        assert!(now.index_children().is_empty(), "the deleted index's entry went with it");
        assert_eq!(backend.recorded("group/app"), Some(now));
        assert!(backend.tag_list("no/such", &none).await.unwrap().is_none());
    }

    /// A pass releases its list when done: a list being decided stays loaded however many
    /// others pass meanwhile (kept by recency alone, a big one was parsed over and over).
    #[tokio::test]
    async fn a_released_list_leaves_memory_with_its_deletions_kept_and_the_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let backend = app_and_others(dir.path());
        let Backend::Recordings(recordings) = &backend else { unreachable!() };
        let loaded = || recordings.state.lock().unwrap().loaded.iter().map(|l| l.repository.clone()).collect::<Vec<_>>();
        let none = |_, _| {};

        backend.tag_list("group/app", &none).await.unwrap().unwrap();
        assert_eq!(backend.delete_manifest("group/app", &d(1)).await.unwrap(), DeleteOutcome::Deleted);
        // More passes than lists kept, each releasing its list: `group/app`'s stays.
        for i in 0..KEEP_LOADED + 2 {
            let repo = format!("other/{i:02}");
            backend.tag_list(&repo, &none).await.unwrap().unwrap();
            backend.release(&repo);
        }
        assert_eq!(loaded(), ["group/app"], "only the list of the pass under way is in memory");

        backend.release("group/app");
        assert!(loaded().is_empty());
        let now = backend.tag_list("group/app", &none).await.unwrap().unwrap();
        assert_eq!(names(&now), ["c"], "read again, with its deletions");
        backend.release("no/such");
    }

    #[tokio::test]
    async fn the_recheck_leaves_out_the_tags_asked_and_sees_deletions() {
        let backend = Backend::Recordings(RecordingBackend::from_lists("mem", [app()]));
        assert_eq!(backend.delete_tag("group/app", "a").await.unwrap(), TagDeleteOutcome::Deleted);
        let list = backend.recheck("group/app", &HashSet::from(["c"])).await.unwrap().unwrap();
        assert_eq!(names(&list), ["b"]);
        assert_eq!(list.columns().names().data(), "b", "columns follow the list");
    }

    #[tokio::test]
    async fn a_bad_recording_fails_its_repository_only_and_names_the_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "app.json", app());
        let bad = "{\"format\": \"tagwarden.recording.v1\", \"repository\": \"group/bad\", \"recorded_at\": \"2026-11-20T12:00:00Z\",\n \
                   \"tags\": [{\"name\": \"v1\", \"digest\": \"sha256:abc\"}]}";
        std::fs::write(dir.path().join("bad.json"), bad).unwrap();
        let backend = Backend::Recordings(RecordingBackend::load(dir.path()).unwrap());
        let none = |_, _| {};
        let err = backend.tag_list("group/bad", &none).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bad.json") && text.contains("tags[0].digest") && text.contains("2:"), "{text}");
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(names(&backend.tag_list("group/app", &none).await.unwrap().unwrap()), ["a", "b", "c"]);
    }

    #[test]
    fn the_start_up_scan_refuses_files_that_are_not_recordings_of_distinct_repositories() {
        let cases: &[(&str, &str)] = &[
            ("[1, 2]", "not a tagwarden recording"),
            ("   ", "not a tagwarden recording"),
            ("{\"format\": \"tagwarden.recording.v9\", \"repository\": \"r\"}", "`format` is `tagwarden.recording.v9`"),
            ("{\"format\": \"tagwarden.recording.v1\", \"tags\": []}", "missing field `repository`"),
            ("{\"format\": \"tagwarden.recording.v1\", \"repository\": \"\"}", "`repository` is empty"),
            ("{\"format\": \"tagwarden.recording.v1\", \"tags\": [}", "1:"),
        ];
        for (text, needle) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("x.json"), text).unwrap();
            let err = RecordingBackend::load(dir.path()).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains(needle) && err.contains("x.json"), "{text}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "one.json", app());
        write(dir.path(), "two.json", app());
        let err = RecordingBackend::load(dir.path()).err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(err.contains("one.json and") && err.contains("both recordings of repository group/app"), "{err}");
    }
}
