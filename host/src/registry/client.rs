//! [`RegistryClient`]: the registry operations, each one or a few requests through the transport.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::Method;
use serde::Deserialize;
use url::Url;

use super::auth::Scope;
use super::error::RegistryError;
use super::media::{self, MANIFEST_ACCEPT};
use super::transport::{Answer, Kind, Request, RequestStats, Transport, next_link};
use super::{DeleteOutcome, RegistryConfig, TagDeleteOutcome};
use crate::model::{Digest, ErrorClass, TagList};
use crate::store::MetadataCache;

/// Most pages followed in one listing: a registry whose `Link` headers never end is a bug, not a
/// repository with a billion tags.
const MAX_PAGES: usize = 100_000;

/// What the GitLab probe found (see [`RegistryClient::gitlab_api`]).
const GITLAB_UNKNOWN: u8 = 0;
const GITLAB_YES: u8 = 1;
const GITLAB_NO: u8 = 2;

/// A manifest's bytes as the registry served them, and their media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestContent {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// A client for one registry. Cheap to clone (clones share connections, tokens, the concurrency
/// limit and the counters); `Send + Sync`.
#[derive(Clone)]
pub struct RegistryClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub transport: Transport,
    pub cache: Option<MetadataCache>,
    pub concurrency: usize,
    tag_delete_unsupported: AtomicBool,
    gitlab: AtomicU8,
    /// Whether the registry has the referrers API (the same three states as `gitlab`).
    referrers_api: AtomicU8,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").field("url", &self.base_url().as_str()).finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client for `config.url`, with `cache` (if any) remembering manifest metadata across runs.
    pub fn new(config: RegistryConfig, cache: Option<MetadataCache>) -> anyhow::Result<Self> {
        let url = &config.url;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("registry URL {url} must be http:// or https:// with a host");
        }
        if !url.username().is_empty() || url.password().is_some() {
            bail!(
                "registry URL {}://{}: put credentials in the credentials setting, not the URL",
                url.scheme(),
                url.host_str().unwrap_or("")
            );
        }
        if config.concurrency == 0 {
            bail!("registry {url}: concurrency must be at least 1");
        }
        let transport = Transport::new(&config).with_context(|| format!("building the HTTP client for {url}"))?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                transport,
                cache,
                concurrency: config.concurrency,
                tag_delete_unsupported: AtomicBool::new(false),
                gitlab: AtomicU8::new(GITLAB_UNKNOWN),
                referrers_api: AtomicU8::new(GITLAB_UNKNOWN),
            }),
        })
    }

    pub fn base_url(&self) -> &Url {
        self.inner.transport.base()
    }

    /// Requests sent so far, by kind.
    pub fn stats(&self) -> RequestStats {
        self.inner.transport.stats()
    }

    pub(super) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// `path` (absolute, e.g. `/v2/app/tags/list`) on the registry.
    pub(super) fn url(&self, path_and_query: &str) -> Url {
        self.base_url().join(path_and_query).expect("registry paths are valid relative URLs")
    }

    /// Every repository in `/v2/_catalog`, sorted. Needs the `registry:catalog:*` scope with token
    /// authentication. Repositories whose manifests were all deleted stay listed.
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        // 1000 is the most distribution accepts (more is `400 PAGINATION_NUMBER_INVALID`).
        let first = self.url("/v2/_catalog?n=1000");
        let pages = self.pages(Kind::Catalog, first, None, Scope::Catalog, |body| {
            serde_json::from_slice::<Page>(body).map(|p| p.repositories.unwrap_or_default())
        });
        let mut repos: Vec<String> = pages.await?.unwrap_or_default();
        repos.sort();
        repos.dedup();
        Ok(repos)
    }

    /// The repository's tag names, sorted and without duplicates; `None` when the registry does not
    /// know the repository (404 NAME_UNKNOWN). `"tags": null` (every tag deleted) is an empty list.
    pub async fn tag_names(&self, repo: &str) -> Result<Option<Vec<String>>, RegistryError> {
        #[derive(Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        self.check_repository(repo)?;
        let first = self.url(&format!("/v2/{repo}/tags/list?n=1000"));
        let pages = self.pages(Kind::TagList, first, Some(repo), Scope::Pull(repo.to_string()), |body| {
            serde_json::from_slice::<Page>(body).map(|p| p.tags.unwrap_or_default())
        });
        Ok(pages.await?.map(|mut tags| {
            tags.sort();
            tags.dedup();
            tags
        }))
    }

    /// GETs `first` and every page its `Link: <..>; rel="next"` headers lead to, concatenating what
    /// `parse` extracts. `None` when the first page is `404 NAME_UNKNOWN`.
    pub(super) async fn pages<T>(
        &self,
        kind: Kind,
        first: Url,
        repo: Option<&str>,
        scope: Scope,
        parse: impl Fn(&[u8]) -> serde_json::Result<Vec<T>>,
    ) -> Result<Option<Vec<T>>, RegistryError> {
        let mut out = Vec::new();
        let mut url = first;
        let mut seen = std::collections::HashSet::new();
        for page in 0.. {
            let mut req = Request::new(kind, Method::GET, url.clone(), repo, scope.clone());
            req.accept = Some("application/json");
            let answer = match self.transport().send(&req).await {
                Ok(a) => a,
                Err(e) if page == 0 && e.is_name_unknown() => return Ok(None),
                Err(e) => return Err(e),
            };
            let items =
                parse(&answer.body).map_err(|e| self.malformed(&req, &answer, &format!("the answer is not the expected JSON ({e})")))?;
            out.extend(items);
            seen.insert(url);
            match next_link(&answer.headers, self.base_url()) {
                Some(next) if seen.contains(&next) => {
                    return Err(self.malformed(&req, &answer, &format!("the Link header points back at {}", next.path())));
                }
                Some(_) if page + 1 >= MAX_PAGES => {
                    return Err(self.malformed(&req, &answer, &format!("more than {MAX_PAGES} pages")));
                }
                Some(next) => url = next,
                None => break,
            }
        }
        Ok(Some(out))
    }

    /// The digest `tag` points at, `None` when the tag (or repository) does not exist.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<Digest>, RegistryError> {
        self.check_repository(repo)?;
        self.check_tag(repo, tag)?;
        self.head_manifest(repo, tag).await
    }

    /// `HEAD` the manifest `reference` (tag or digest) with every manifest type accepted; its digest,
    /// or `None` on 404. Falls back to `GET` and hashing when the registry sends no digest header.
    pub(super) async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Option<Digest>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut req = Request::new(Kind::ManifestHead, Method::HEAD, url, Some(repo), Scope::Pull(repo.to_string()));
        req.accept = Some(MANIFEST_ACCEPT);
        let answer = match self.transport().send(&req).await {
            Ok(a) => a,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(header) = answer.header("docker-content-digest") {
            return Digest::parse(header)
                .map(Some)
                .map_err(|e| self.malformed(&req, &answer, &format!("bad Docker-Content-Digest header: {e:#}")));
        }
        Ok(self.get_manifest(repo, reference).await?.map(|(digest, _)| digest))
    }

    /// `GET` the manifest `reference`: its digest and the answer, or `None` on 404. When
    /// `reference` is a sha256 digest the content is checked against it.
    pub(super) async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Option<(Digest, Answer)>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut req = Request::new(Kind::ManifestGet, Method::GET, url, Some(repo), Scope::Pull(repo.to_string()));
        req.accept = Some(MANIFEST_ACCEPT);
        let answer = match self.transport().send(&req).await {
            Ok(a) => a,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        let computed = Digest::sha256_of(&answer.body);
        if reference.starts_with("sha256:") && reference != computed.as_str() {
            return Err(self.malformed(&req, &answer, &format!("the content's digest is {computed}, not the one asked for")));
        }
        let digest = match answer.header("docker-content-digest").map(Digest::parse) {
            Some(Ok(d)) => d,
            _ => computed,
        };
        Ok(Some((digest, answer)))
    }

    /// Manifest `digest` exactly as the registry serves it (the bytes checked against the
    /// digest), with its media type: what tagwarden keeps before deleting it, so that a restore
    /// can push it back. `None` on 404.
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<Option<ManifestContent>, RegistryError> {
        self.check_repository(repo)?;
        let Some((_, answer)) = self.get_manifest(repo, digest.as_str()).await? else { return Ok(None) };
        let media_type = media::served_media_type(answer.header("content-type"), &answer.body);
        Ok(Some(ManifestContent { digest: digest.clone(), media_type, body: answer.body }))
    }

    /// `GET` a blob (following redirects to blob storage); `None` on 404.
    pub(super) async fn get_blob(&self, repo: &str, digest: &Digest) -> Result<Option<Bytes>, RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let req = Request::new(Kind::BlobGet, Method::GET, url, Some(repo), Scope::Pull(repo.to_string()));
        match self.transport().send(&req).await {
            Ok(a) => Ok(Some(a.body)),
            Err(e) if e.status == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes the manifest `digest` and with it every tag pointing at it. A 404 from the registry
    /// API means someone else deleted it first: [`DeleteOutcome::AlreadyGone`]. (A 404 that is not
    /// a registry answer — no error code — stays an error: it usually means a wrong URL.)
    pub async fn delete_manifest(&self, repo: &str, digest: &Digest) -> Result<DeleteOutcome, RegistryError> {
        self.check_repository(repo)?;
        let url = self.url(&format!("/v2/{repo}/manifests/{digest}"));
        let mut req = Request::new(Kind::Delete, Method::DELETE, url, Some(repo), Scope::Delete(repo.to_string()));
        req.pass_statuses = &[404];
        let answer = self.transport().send(&req).await?;
        if answer.status.is_success() {
            return Ok(DeleteOutcome::Deleted);
        }
        let error = self.transport().status_error(&req, &answer);
        if error.is_registry_not_found() { Ok(DeleteOutcome::AlreadyGone) } else { Err(error) }
    }

    /// Deletes one tag, leaving the manifest and its other tags (OCI 1.1). Registries without tag
    /// delete answer `400 DIGEST_INVALID` (distribution 2.8), `405` or `UNSUPPORTED`: the first such
    /// answer is remembered and every later call returns [`TagDeleteOutcome::Unsupported`] without a
    /// request. Note that a registry with deletes disabled altogether also answers `405
    /// UNSUPPORTED`; check that manifest deletes work before falling back to re-tagging.
    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<TagDeleteOutcome, RegistryError> {
        self.check_repository(repo)?;
        self.check_tag(repo, tag)?;
        if self.inner.tag_delete_unsupported.load(Ordering::Relaxed) {
            return Ok(TagDeleteOutcome::Unsupported);
        }
        let url = self.url(&format!("/v2/{repo}/manifests/{tag}"));
        let mut req = Request::new(Kind::Delete, Method::DELETE, url, Some(repo), Scope::Delete(repo.to_string()));
        req.pass_statuses = &[400, 404, 405];
        let answer = self.transport().send(&req).await?;
        if answer.status.is_success() {
            return Ok(TagDeleteOutcome::Deleted);
        }
        let error = self.transport().status_error(&req, &answer);
        let code = error.code.as_deref();
        let unsupported = matches!((error.status, code), (Some(400), Some("DIGEST_INVALID")) | (Some(405), _) | (_, Some("UNSUPPORTED")));
        if unsupported {
            if !self.inner.tag_delete_unsupported.swap(true, Ordering::Relaxed) {
                tracing::info!(registry = self.transport().label(), "the registry cannot delete single tags ({error})");
            }
            return Ok(TagDeleteOutcome::Unsupported);
        }
        if error.is_registry_not_found() { Ok(TagDeleteOutcome::AlreadyGone) } else { Err(error) }
    }

    /// Whether the registry has blob `digest` in `repo` (`HEAD`; 404 means no).
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        self.check_repository(repo)?;
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut req = Request::new(Kind::BlobHead, Method::HEAD, url, Some(repo), Scope::Pull(repo.to_string()));
        req.pass_statuses = &[404];
        let answer = self.transport().send(&req).await?;
        Ok(answer.status.is_success())
    }

    /// Whether the registry has manifest `digest` in `repo` (`HEAD`; 404 means no). This is how an
    /// ambiguous delete (a timeout, a reset, a 5xx after the registry may have acted) is settled.
    pub async fn manifest_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        self.check_repository(repo)?;
        Ok(self.head_manifest(repo, digest.as_str()).await?.is_some())
    }

    /// Uploads `bytes` as a blob unless the registry has it already (monolithic: `POST` an upload
    /// session, then `PUT` the bytes to its `Location` with `digest=`). Returns the blob's digest.
    ///
    /// A fault after the registry accepted the bytes (a 5xx or reset on the `PUT`) consumes the
    /// upload session, so the transport's retry of the same `PUT` answers `404
    /// BLOB_UPLOAD_UNKNOWN`. After any failed attempt the blob is looked for first (it may be
    /// there), and otherwise the upload starts again with a new session, a few times.
    pub async fn push_blob(&self, repo: &str, bytes: Vec<u8>) -> Result<Digest, RegistryError> {
        const ATTEMPTS: usize = 3;
        self.check_repository(repo)?;
        let digest = Digest::sha256_of(&bytes);
        let bytes = Bytes::from(bytes);
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            match self.blob_exists(repo, &digest).await {
                Ok(true) => return Ok(digest),
                Ok(false) => {}
                Err(e) if e.class.is_retryable() => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
            match self.upload_blob(repo, &digest, bytes.clone()).await {
                Ok(()) => return Ok(digest),
                // A lost session, or a fault that may have come after the registry acted: look again.
                Err(e) if e.class.is_retryable() || e.code.as_deref() == Some("BLOB_UPLOAD_UNKNOWN") => last_error = Some(e),
                Err(e) => return Err(e),
            }
        }
        if self.blob_exists(repo, &digest).await.unwrap_or(false) {
            return Ok(digest);
        }
        Err(last_error.expect("every failed attempt records its error"))
    }

    /// One monolithic upload: a new session, then the bytes.
    async fn upload_blob(&self, repo: &str, digest: &Digest, bytes: Bytes) -> Result<(), RegistryError> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        let start = Request::new(Kind::Upload, Method::POST, url, Some(repo), Scope::Push(repo.to_string()));
        let answer = self.transport().send(&start).await?;
        let Some(location) = answer.header("location") else {
            return Err(self.malformed(&start, &answer, "the upload answer has no Location header"));
        };
        // Usually absolute with a query already (`?_state=..`); resolve relative ones too.
        let mut upload =
            self.base_url().join(location).map_err(|e| self.malformed(&start, &answer, &format!("bad upload Location: {e}")))?;
        upload.query_pairs_mut().append_pair("digest", digest.as_str());
        let mut put = Request::new(Kind::Put, Method::PUT, upload, Some(repo), Scope::Push(repo.to_string()));
        put.body = Some(("application/octet-stream".into(), bytes));
        self.transport().send(&put).await?;
        Ok(())
    }

    /// Uploads a manifest as `reference` (a tag, or its digest). Returns the manifest's digest.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: Vec<u8>) -> Result<Digest, RegistryError> {
        self.check_repository(repo)?;
        if Digest::parse(reference).is_err() {
            self.check_tag(repo, reference)?;
        }
        let computed = Digest::sha256_of(&bytes);
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let mut req = Request::new(Kind::Put, Method::PUT, url, Some(repo), Scope::Push(repo.to_string()));
        req.body = Some((media::essence(media_type).to_string(), Bytes::from(bytes)));
        let answer = self.transport().send(&req).await?;
        match answer.header("docker-content-digest").map(Digest::parse) {
            Some(Ok(d)) => Ok(d),
            _ => Ok(computed),
        }
    }

    /// The referrers of `subject` through the OCI 1.1 referrers API (`GET
    /// /v2/<name>/referrers/<digest>`, every `Link` page), or `None` when the registry has no
    /// such API. The first answer decides that, and it is remembered (as for tag delete): a
    /// router-level 404, a 400, 405 or 501 mean no API; a 404 with a registry error code (the
    /// subject is unknown) means no referrers and decides nothing.
    pub(super) async fn referrers(&self, repo: &str, subject: &Digest) -> Result<Option<Vec<media::Descriptor>>, RegistryError> {
        #[derive(Deserialize)]
        struct Index {
            #[serde(default)]
            manifests: Option<Vec<media::Descriptor>>,
        }
        if self.inner.referrers_api.load(Ordering::Relaxed) == GITLAB_NO {
            return Ok(None);
        }
        let mut out = Vec::new();
        let mut url = self.url(&format!("/v2/{repo}/referrers/{subject}"));
        for page in 0..MAX_PAGES {
            let mut req = Request::new(Kind::Referrers, Method::GET, url.clone(), Some(repo), Scope::Pull(repo.to_string()));
            req.accept = Some(media::OCI_INDEX);
            req.pass_statuses = &[400, 404, 405, 501];
            let answer = self.transport().send(&req).await?;
            if !answer.status.is_success() {
                let error = self.transport().status_error(&req, &answer);
                if page == 0 && error.is_registry_not_found() {
                    return Ok(Some(Vec::new()));
                }
                if page > 0 {
                    return Err(error);
                }
                if self.inner.referrers_api.swap(GITLAB_NO, Ordering::Relaxed) != GITLAB_NO {
                    tracing::info!(registry = self.transport().label(), "no referrers API ({error}); using the fallback tags only");
                }
                return Ok(None);
            }
            let index: Index = serde_json::from_slice(&answer.body)
                .map_err(|e| self.malformed(&req, &answer, &format!("the referrers answer is not an image index ({e})")))?;
            if self.inner.referrers_api.swap(GITLAB_YES, Ordering::Relaxed) == GITLAB_UNKNOWN {
                tracing::debug!(registry = self.transport().label(), "the registry has the referrers API");
            }
            out.extend(index.manifests.unwrap_or_default());
            match next_link(&answer.headers, self.base_url()) {
                Some(next) if next != url => url = next,
                _ => break,
            }
        }
        Ok(Some(out))
    }

    /// Whether the registry offers GitLab's API: probed once (`GET /gitlab/v1/`: 200 or 401 mean
    /// yes), then remembered.
    pub(super) async fn gitlab_api(&self) -> Result<bool, RegistryError> {
        match self.inner.gitlab.load(Ordering::Relaxed) {
            GITLAB_YES => return Ok(true),
            GITLAB_NO => return Ok(false),
            _ => {}
        }
        let mut req = Request::new(Kind::Probe, Method::GET, self.url("/gitlab/v1/"), None, Scope::None);
        req.pass_statuses = &[400, 401, 403, 404, 405, 406];
        let answer = self.transport().send(&req).await?;
        let yes = answer.status.is_success() || answer.status.as_u16() == 401;
        tracing::debug!(registry = self.transport().label(), status = answer.status.as_u16(), gitlab = yes, "GitLab API probe");
        self.set_gitlab_api(yes);
        Ok(yes)
    }

    pub(super) fn set_gitlab_api(&self, yes: bool) {
        self.inner.gitlab.store(if yes { GITLAB_YES } else { GITLAB_NO }, Ordering::Relaxed);
    }

    /// A well-formed answer that does not say what it should.
    pub(super) fn malformed(&self, req: &Request, answer: &Answer, what: &str) -> RegistryError {
        self.transport().error(req, Some(answer.status.as_u16()), None, what.to_string(), ErrorClass::Permanent)
    }

    /// Repository names go into URL paths unescaped: only the distribution grammar's characters
    /// (lowercase letters, digits, `.`, `_`, `-`, `/` between components) are allowed.
    pub(crate) fn check_repository(&self, repo: &str) -> Result<(), RegistryError> {
        if is_valid_repository_name(repo) { Ok(()) } else { Err(self.invalid(repo, format!("`{repo}` is not a valid repository name"))) }
    }

    /// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
    pub(super) fn check_tag(&self, repo: &str, tag: &str) -> Result<(), RegistryError> {
        if is_valid_tag(tag) { Ok(()) } else { Err(self.invalid(repo, format!("`{tag}` is not a valid tag"))) }
    }

    fn invalid(&self, repo: &str, message: String) -> RegistryError {
        self.permanent_error(Method::GET, self.base_url().clone(), repo, message)
    }

    /// A [`ErrorClass::Permanent`] error about `method url` on `repo` that no answer status explains.
    pub(super) fn permanent_error(&self, method: Method, url: Url, repo: &str, message: String) -> RegistryError {
        let req = Request::new(Kind::Probe, method, url, Some(repo), Scope::None);
        self.transport().error(&req, None, None, message, ErrorClass::Permanent)
    }
}

/// Whether `repo` is a repository name of the distribution grammar: lowercase letters,
/// digits, `.`, `_`, `-`, components separated by `/`, each starting and ending with a
/// letter or digit.
pub fn is_valid_repository_name(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// Whether `tag` is a tag of the distribution grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !matches!(tag.as_bytes()[0], b'.' | b'-')
}

/// [`is_valid_tag`] as an error for an operator who typed the tag.
pub fn validate_tag(tag: &str) -> anyhow::Result<()> {
    if is_valid_tag(tag) {
        return Ok(());
    }
    anyhow::bail!(
        "`{}` is not a valid tag: expected up to 128 letters, digits, `_`, `.` or `-`, not starting with `.` or `-`",
        crate::untrusted::escape(tag)
    )
}

/// [`is_valid_repository_name`] as an error for an operator who typed the name.
pub fn validate_repository_name(repo: &str) -> anyhow::Result<()> {
    if is_valid_repository_name(repo) {
        return Ok(());
    }
    anyhow::bail!(
        "`{}` is not a valid repository name: expected lowercase letters, digits, `.`, `_` or `-`, components separated by `/` (e.g. `group/app`)",
        crate::untrusted::escape(repo)
    )
}

/// `TagList::new` failing means the registry listed a tag twice after deduplication: impossible,
/// but reported rather than unwrapped.
pub(super) fn tag_list_or_error(client: &RegistryClient, repo: &str, list: anyhow::Result<TagList>) -> Result<TagList, RegistryError> {
    list.map_err(|e| client.permanent_error(Method::GET, client.url(&format!("/v2/{repo}/tags/list")), repo, format!("{e:#}")))
}
