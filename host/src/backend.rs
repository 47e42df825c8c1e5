//! Where tags come from and where deletions go: a real registry, or recordings.
//!
//! Both backends go through the same pass code ([`crate::pass`]), so a simulation over
//! recordings exercises exactly what a real pass does, at any scale, with no registry.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;

use crate::model::{Digest, TagList};
use crate::recording::Recording;
use crate::registry::{DeleteOutcome, ManifestContent, RegistryClient, RegistryError, TagDeleteOutcome};

/// A source of tag lists and a target for deletions.
pub enum Backend {
    /// A registry spoken to over HTTP.
    Oci(RegistryClient),
    /// Recorded tag lists held in memory; deletions change the in-memory copy only.
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
            Backend::Recordings(r) => Ok(r.lists.lock().unwrap().keys().cloned().collect()),
        }
    }

    /// The repository's tags with digests and times; `None` when it does not exist.
    pub async fn tag_list(&self, repo: &str, progress: &(dyn Fn(usize, usize) + Send + Sync)) -> Result<Option<TagList>, RegistryError> {
        match self {
            Backend::Oci(c) => c.tag_list(repo, progress).await,
            Backend::Recordings(r) => Ok(r.lists.lock().unwrap().get(repo).cloned()),
        }
    }

    /// The repository's tags as they are now, except those in `skip`, for the re-check
    /// before deleting (see [`crate::registry::RegistryClient::recheck`]); `None` when the
    /// repository is gone.
    pub async fn recheck(&self, repo: &str, skip: &HashSet<&str>) -> Result<Option<TagList>, RegistryError> {
        match self {
            Backend::Oci(c) => c.recheck(repo, skip).await,
            Backend::Recordings(r) => Ok(r.lists.lock().unwrap().get(repo).map(|list| {
                let mut list = list.clone();
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
            Backend::Recordings(r) => Ok(r
                .lists
                .lock()
                .unwrap()
                .get(repo)
                .is_some_and(|l| l.tags().iter().any(|t| &t.digest == digest) || l.untagged().iter().any(|u| &u.digest == digest))),
        }
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
            Backend::Recordings(r) => {
                let mut lists = r.lists.lock().unwrap();
                let Some(list) = lists.get_mut(repo) else { return Ok(DeleteOutcome::AlreadyGone) };
                let before = (list.tags().len(), list.untagged().len());
                list.remove_digest(digest);
                Ok(if before == (list.tags().len(), list.untagged().len()) { DeleteOutcome::AlreadyGone } else { DeleteOutcome::Deleted })
            }
        }
    }

    /// Deletes one tag, leaving its manifest (OCI 1.1). Recordings behave like a
    /// registry that supports it.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<TagDeleteOutcome, RegistryError> {
        match self {
            Backend::Oci(c) => c.delete_tag(repo, tag).await,
            Backend::Recordings(r) => {
                let mut lists = r.lists.lock().unwrap();
                let Some(list) = lists.get_mut(repo) else { return Ok(TagDeleteOutcome::AlreadyGone) };
                let before = list.tags().len();
                list.remove_tags(&HashSet::from([tag]));
                Ok(if list.tags().len() == before { TagDeleteOutcome::AlreadyGone } else { TagDeleteOutcome::Deleted })
            }
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
            Backend::Recordings(r) => r.lists.lock().unwrap().get(repo).cloned(),
            Backend::Oci(_) => None,
        }
    }
}

/// Recorded tag lists served from memory.
pub struct RecordingBackend {
    origin: String,
    lists: Mutex<BTreeMap<String, TagList>>,
}

impl RecordingBackend {
    /// Loads every `*.json` recording in `dir` (or one file).
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
        let mut lists: BTreeMap<String, (std::path::PathBuf, TagList)> = BTreeMap::new();
        for f in files {
            let r = Recording::read(&f)?;
            if let Some((previous, _)) = lists.get(&r.list.repository) {
                anyhow::bail!(
                    "{} and {} are both recordings of repository {}; keep one",
                    previous.display(),
                    f.display(),
                    r.list.repository
                );
            }
            lists.insert(r.list.repository.clone(), (f, r.list));
        }
        Ok(Self::from_lists(path.display().to_string(), lists.into_values().map(|(_, l)| l)))
    }

    /// Serves the given lists.
    pub fn from_lists(origin: impl Into<String>, lists: impl IntoIterator<Item = TagList>) -> Self {
        RecordingBackend { origin: origin.into(), lists: Mutex::new(lists.into_iter().map(|l| (l.repository.clone(), l)).collect()) }
    }
}
