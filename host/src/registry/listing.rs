//! Full tag lists: digests, creation times and sizes, with the metadata cache in front of the
//! per-digest requests (see the module docs in `mod.rs` for the request plan).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OnceCell;

use super::client::{RegistryClient, tag_list_or_error};
use super::error::RegistryError;
use super::gitlab;
use super::media::{self, Manifest};
use crate::model::{Digest, Referrer, Tag, TagList};
use crate::store::{ManifestMetadata, MetadataCache};

/// Index nesting followed when looking for creation times (an index of indexes is legal but rare).
const MAX_INDEX_DEPTH: u8 = 2;
/// Rounds of referrers API lookups: referrers of images, then referrers of those (a
/// signature of an attestation).
const MAX_REFERRER_DEPTH: usize = 2;
/// Config blobs bigger than this are not read for `created` (real ones are a few KiB).
const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl RegistryClient {
    /// The repository's tags with digests, creation times, sizes and media types, sorted by name;
    /// `None` when the repository is unknown. `progress(done, total)` is called as tags resolve.
    ///
    /// On GitLab's registry this is GitLab's tags API (a request per 1,000 tags). Elsewhere: the tag
    /// names, a `HEAD` per tag, and for each distinct digest missing from the metadata cache its
    /// manifest and config blob (for an index: its children's; an index's creation time is its
    /// newest child's). Tags deleted while the list is built are left out. A failed metadata-cache
    /// read or write is logged and costs only requests.
    pub async fn tag_list(&self, repo: &str, progress: &(dyn Fn(usize, usize) + Send + Sync)) -> Result<Option<TagList>, RegistryError> {
        self.check_repository(repo)?;
        if self.gitlab_api().await? {
            match gitlab::tag_list(self, repo).await {
                Err(e) if e.status == Some(404) && e.code.is_none() => {
                    // A router-level 404: whatever answered the probe, it has no tags API.
                    tracing::warn!(registry = self.transport().label(), "GitLab tags API not found ({e}); using the OCI API");
                    self.set_gitlab_api(false);
                }
                Ok(Some(list)) => {
                    progress(list.tags().len(), list.tags().len());
                    return self.complete_referrers(repo, list.split_referrer_tags()).await.map(Some);
                }
                other => return other,
            }
        }
        let Some(names) = self.tag_names(repo).await? else {
            return Ok(None);
        };
        let list = self.resolve_tags(repo, names, progress).await?;
        self.complete_referrers(repo, list).await.map(Some)
    }

    /// `list` (its fallback tags already split off as referrers) with the referrers the
    /// referrers API knows, when the registry has it (the first request is the probe,
    /// remembered), down to referrers of referrers; then each referrer whose subject is not
    /// in the list is checked: a subject that exists untagged stays (nothing decides on it),
    /// one that is gone makes the referrer an orphan.
    async fn complete_referrers(&self, repo: &str, mut list: TagList) -> Result<TagList, RegistryError> {
        let mut subjects: Vec<Digest> = list.tags().iter().map(|t| t.digest.clone()).collect();
        subjects.sort();
        subjects.dedup();
        let mut seen: HashSet<Digest> = subjects.iter().cloned().collect();
        seen.extend(list.referrers().iter().map(|r| r.digest.clone()));
        let mut found: Vec<Referrer> = Vec::new();
        'rounds: for _ in 0..MAX_REFERRER_DEPTH {
            let Some((first, rest)) = subjects.split_first() else { break };
            // The first request alone: it may be the probe that says there is no API.
            let Some(first_answer) = self.referrers(repo, first).await? else { break 'rounds };
            let answers: Vec<(Digest, Option<Vec<media::Descriptor>>)> = futures::stream::iter(rest.iter().cloned())
                .map(|subject| async move { self.referrers(repo, &subject).await.map(|a| (subject, a)) })
                .buffer_unordered(self.inner.concurrency)
                .try_collect()
                .await?;
            let mut next = Vec::new();
            for (subject, descriptors) in std::iter::once((first.clone(), Some(first_answer))).chain(answers) {
                for d in descriptors.into_iter().flatten() {
                    let Ok(digest) = Digest::parse(&d.digest) else { continue };
                    if seen.insert(digest.clone()) {
                        next.push(digest.clone());
                        found.push(Referrer {
                            tag: None,
                            digest,
                            subject: subject.clone(),
                            artifact_type: d.artifact_type,
                            subject_untagged: false,
                        });
                    }
                }
            }
            subjects = next;
        }
        if !found.is_empty() {
            list = list.with_referrers(found);
        }
        let manifests = list.manifest_digests();
        let mut missing: Vec<Digest> =
            list.referrers().iter().filter(|r| !manifests.contains(&r.subject)).map(|r| r.subject.clone()).collect();
        missing.sort();
        missing.dedup();
        if missing.is_empty() {
            return Ok(list);
        }
        let present: HashSet<Digest> = futures::stream::iter(missing)
            .map(|subject| async move { self.manifest_exists(repo, &subject).await.map(|yes| yes.then_some(subject)) })
            .buffer_unordered(self.inner.concurrency)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        list.mark_untagged_subjects(&present);
        Ok(list)
    }

    /// The repository's tags as they are now, for the re-check before deleting: every tag except
    /// those in `skip` (tags the plan deletes by digest, whose moves cannot hurt a kept tag),
    /// resolved afresh (one `HEAD` each; metadata from the cache). On GitLab's registry, the
    /// whole list from its tags API (a request per 1,000 tags). `None` when the repository is gone.
    pub async fn recheck(&self, repo: &str, skip: &HashSet<&str>) -> Result<Option<TagList>, RegistryError> {
        self.check_repository(repo)?;
        if self.gitlab_api().await? {
            return Ok(gitlab::tag_list(self, repo).await?.map(TagList::split_referrer_tags));
        }
        let Some(names) = self.tag_names(repo).await? else {
            return Ok(None);
        };
        let names = names.into_iter().filter(|n| !skip.contains(n.as_str())).collect();
        self.resolve_tags(repo, names, &|_, _| {}).await.map(Some)
    }

    /// `names` resolved to digests, with their metadata and the children of image indexes among
    /// them, fallback tags split off as referrers. Tags deleted meanwhile are left out.
    async fn resolve_tags(
        &self,
        repo: &str,
        names: Vec<String>,
        progress: &(dyn Fn(usize, usize) + Send + Sync),
    ) -> Result<TagList, RegistryError> {
        let total = names.len();
        progress(0, total);
        let done = AtomicUsize::new(0);
        let resolver = Resolver::new(self, repo);
        // Digests that turned out to be image indexes: their children are looked up below.
        let indexes: Mutex<Vec<Digest>> = Mutex::default();
        let resolved: Result<Vec<Option<Tag>>, RegistryError> = futures::stream::iter(names)
            // An owned name, not `&String`: a closure over borrowed items makes the future !Send
            // (the compiler cannot prove it for every lifetime).
            .map(|name| {
                let (resolver, done, indexes) = (&resolver, &done, &indexes);
                async move {
                    let tag = match self.head_manifest(repo, &name).await? {
                        None => None, // deleted since the listing
                        Some(digest) => resolver.metadata(&digest, 0).await?.map(|meta| {
                            if !meta.children.is_empty() {
                                indexes.lock().unwrap_or_else(|e| e.into_inner()).push(digest.clone());
                            }
                            Tag {
                                created_at: meta.created_at,
                                size_bytes: meta.size_bytes,
                                media_type: Some(meta.media_type.into()),
                                ..Tag::new(name.clone(), digest)
                            }
                        }),
                    };
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
                    Ok(tag)
                }
            })
            .buffer_unordered(self.inner.concurrency)
            .try_collect()
            .await;
        let index_children = match resolved {
            Ok(_) => resolver.index_children(indexes.into_inner().unwrap_or_else(|e| e.into_inner())).await,
            Err(_) => Ok(BTreeMap::new()),
        };
        // Keep what was learnt even when the listing failed: the next attempt starts further on.
        resolver.save().await;
        let tags = resolved?.into_iter().flatten().collect();
        let list = tag_list_or_error(self, repo, TagList::new(repo, tags, Vec::new()))?;
        Ok(list.with_index_children(index_children?).split_referrer_tags())
    }

    /// `list` (from GitLab's tags API, which does not say what an index references) with
    /// the children of its image indexes: each index manifest is read once, then cached.
    pub(super) async fn with_index_children(&self, repo: &str, list: TagList) -> Result<TagList, RegistryError> {
        let indexes: Vec<Digest> = list
            .tags()
            .iter()
            .filter(|t| t.media_type.as_deref().is_some_and(|m| matches!(m, media::OCI_INDEX | media::DOCKER_MANIFEST_LIST)))
            .map(|t| t.digest.clone())
            .collect();
        if indexes.is_empty() {
            return Ok(list);
        }
        let resolver = Resolver::new(self, repo);
        let children = resolver.index_children(indexes).await;
        resolver.save().await;
        Ok(list.with_index_children(children?))
    }
}

/// Manifest metadata for one listing: the cache first, then the registry, each digest fetched at
/// most once even when many tags (or indexes) share it.
struct Resolver<'a> {
    client: &'a RegistryClient,
    repo: &'a str,
    cache: Option<&'a MetadataCache>,
    /// `None` inside a cell: the manifest is gone (404).
    cells: Mutex<HashMap<Digest, Arc<OnceCell<Option<ManifestMetadata>>>>>,
    /// Fetched entries to write to the cache.
    learnt: Mutex<Vec<(Digest, ManifestMetadata)>>,
}

impl<'a> Resolver<'a> {
    fn new(client: &'a RegistryClient, repo: &'a str) -> Self {
        Resolver { client, repo, cache: client.inner.cache.as_ref(), cells: Mutex::default(), learnt: Mutex::default() }
    }

    /// The metadata of `digest`, `None` when the registry no longer has the manifest.
    fn metadata<'s>(&'s self, digest: &'s Digest, depth: u8) -> BoxFuture<'s, Result<Option<ManifestMetadata>, RegistryError>> {
        Box::pin(async move {
            let cell = self.cells.lock().unwrap_or_else(|e| e.into_inner()).entry(digest.clone()).or_default().clone();
            cell.get_or_try_init(|| self.lookup(digest, depth)).await.cloned()
        })
    }

    async fn lookup(&self, digest: &Digest, depth: u8) -> Result<Option<ManifestMetadata>, RegistryError> {
        if let Some(meta) = self.cached(std::slice::from_ref(digest)).remove(digest) {
            return Ok(Some(meta));
        }
        let Some((meta, complete)) = self.fetch(digest, depth).await? else {
            return Ok(None);
        };
        // Metadata derived with a blob or child missing may improve once they are pushed: not cached.
        if complete {
            self.learnt.lock().unwrap_or_else(|e| e.into_inner()).push((digest.clone(), meta.clone()));
        }
        Ok(Some(meta))
    }

    /// The children of each index among `roots` and of the indexes nested in them (down to
    /// `MAX_INDEX_DEPTH`), from metadata this listing resolved, the cache, or the registry.
    async fn index_children(&self, roots: Vec<Digest>) -> Result<BTreeMap<Digest, Vec<Digest>>, RegistryError> {
        let mut found = BTreeMap::new();
        let mut queue: Vec<(Digest, u8)> = roots.into_iter().map(|d| (d, 0)).collect();
        let mut seen = HashSet::new();
        while let Some((digest, depth)) = queue.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Some(meta) = self.metadata(&digest, depth).await? else {
                continue; // gone: nothing to protect
            };
            if meta.children.is_empty() {
                continue;
            }
            if depth < MAX_INDEX_DEPTH {
                queue.extend(meta.children.iter().map(|c| (c.clone(), depth + 1)));
            }
            found.insert(digest, meta.children);
        }
        Ok(found)
    }

    /// Reads the manifest (and config, or children) from the registry. The flag says whether
    /// everything it refers to was there.
    async fn fetch(&self, digest: &Digest, depth: u8) -> Result<Option<(ManifestMetadata, bool)>, RegistryError> {
        let Some((_, answer)) = self.client.get_manifest(self.repo, digest.as_str()).await? else {
            return Ok(None);
        };
        let content_type = answer.header("content-type").map(media::essence).filter(|t| !t.is_empty()).map(str::to_string);
        let manifest = Manifest::parse(&answer.body).ok();
        let media_type = content_type
            .clone()
            .or_else(|| manifest.as_ref().and_then(|m| m.media_type.clone()))
            .unwrap_or_else(|| "application/octet-stream".to_string());
        let Some(manifest) = manifest else {
            tracing::warn!(repository = self.repo, %digest, media_type, "manifest is not JSON; no creation time");
            let meta = ManifestMetadata { media_type, created_at: None, size_bytes: None, config_digest: None, children: Vec::new() };
            return Ok(Some((meta, true)));
        };
        if manifest.is_index(content_type.as_deref()) {
            return self.fetch_index(digest, media_type, &manifest, depth).await.map(Some);
        }
        let mut complete = true;
        let config_digest = manifest.image_config();
        let mut created_at = None;
        let config_size = manifest.config.as_ref().and_then(|c| c.size).unwrap_or(0);
        if let Some(config) = &config_digest
            && config_size <= MAX_CONFIG_BYTES
        {
            match self.client.get_blob(self.repo, config).await? {
                Some(body) => created_at = media::config_created(&body),
                None => {
                    tracing::warn!(repository = self.repo, %digest, %config, "config blob missing; no creation time");
                    complete = false;
                }
            }
        }
        let meta = ManifestMetadata {
            media_type,
            created_at: created_at.or_else(|| manifest.created_annotation()),
            size_bytes: manifest.image_size(),
            config_digest: manifest.config.as_ref().and_then(|c| Digest::parse(&c.digest).ok()),
            children: Vec::new(),
        };
        Ok(Some((meta, complete)))
    }

    /// An index: created = the newest child's, size = the children's sum.
    async fn fetch_index(
        &self,
        digest: &Digest,
        media_type: String,
        manifest: &Manifest,
        depth: u8,
    ) -> Result<(ManifestMetadata, bool), RegistryError> {
        // Every child is recorded (the deletion planner protects them); metadata is
        // fetched only down to `MAX_INDEX_DEPTH`.
        let all_children = manifest.children();
        let children: &[Digest] = if depth < MAX_INDEX_DEPTH { &all_children } else { &[] };
        // One cache read for all children, then the registry for the rest.
        let cached = self.cached(children);
        let fetched = futures::future::try_join_all(
            children
                .iter()
                .filter(|c| !cached.contains_key(*c))
                .map(|child| async move { Ok::<_, RegistryError>((child, self.metadata(child, depth + 1).await?)) }),
        )
        .await?;
        let mut complete = true;
        let mut metas: Vec<&ManifestMetadata> = cached.values().collect();
        for (child, meta) in &fetched {
            match meta {
                Some(m) => metas.push(m),
                None => {
                    tracing::debug!(repository = self.repo, index = %digest, %child, "index child is gone (dangling index)");
                    complete = false;
                }
            }
        }
        let meta = ManifestMetadata {
            media_type,
            created_at: metas.iter().filter_map(|m| m.created_at).max().or_else(|| manifest.created_annotation()),
            size_bytes: if metas.is_empty() { None } else { metas.iter().map(|m| m.size_bytes).sum() },
            config_digest: None,
            children: all_children.clone(),
        };
        Ok((meta, complete))
    }

    fn cached(&self, digests: &[Digest]) -> HashMap<Digest, ManifestMetadata> {
        let Some(cache) = self.cache else {
            return HashMap::new();
        };
        // A primary-key read: fast enough to run on the async thread.
        cache.get_many(digests).unwrap_or_else(|e| {
            tracing::warn!("{e:#}; fetching from the registry instead");
            HashMap::new()
        })
    }

    /// Writes what was fetched to the cache, in one transaction off the async threads.
    async fn save(&self) {
        let Some(cache) = self.cache.cloned() else {
            return;
        };
        let learnt = std::mem::take(&mut *self.learnt.lock().unwrap_or_else(|e| e.into_inner()));
        if learnt.is_empty() {
            return;
        }
        match tokio::task::spawn_blocking(move || cache.put_many(&learnt)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("{e:#}; the next listing will fetch these manifests again")
            }
            Err(e) => tracing::warn!("writing the metadata cache failed: {e}"),
        }
    }
}
