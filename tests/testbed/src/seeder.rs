//! Pushes test fixtures into a registry with plain HTTP (reqwest), independent of tagwarden's client.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use hyper::body::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue, LINK, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde_json::json;

use crate::util;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The `Accept` header to send on manifest reads: all four types (see the protocol notes).
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The one tiny layer every seeded image shares (uploaded once per repository and seeder).
const LAYER: &[u8] = b"tagwarden-testbed tiny layer\n";

/// How a [`Seeder`] authenticates.
#[derive(Clone, Debug)]
pub(crate) enum SeederAuth {
    None,
    Basic { user: String, password: String },
    Token { realm: String, service: String, user: String, password: String },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Oci,
    Docker,
}

impl Flavor {
    fn manifest(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_MANIFEST,
            Flavor::Docker => DOCKER_MANIFEST,
        }
    }
    fn config(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_CONFIG,
            Flavor::Docker => DOCKER_CONFIG,
        }
    }
    fn layer(self) -> &'static str {
        match self {
            Flavor::Oci => OCI_LAYER,
            Flavor::Docker => DOCKER_LAYER,
        }
    }
}

struct Inner {
    base: String,
    http: reqwest::Client,
    auth: SeederAuth,
    /// Bearer tokens by scope string.
    tokens: Mutex<HashMap<String, String>>,
    /// `(repo, digest)` of blobs known to be in the registry.
    blobs: Mutex<HashSet<(String, String)>>,
    /// Manifests this seeder pushed: digest → (media type, bytes), so re-tagging is one PUT.
    manifests: Mutex<HashMap<String, (String, Bytes)>>,
}

/// Pushes and reads fixtures with plain HTTP requests (reqwest), authenticated as the test bed's admin;
/// cheap to clone (shared connection pool and token cache).
#[derive(Clone)]
pub struct Seeder {
    inner: Arc<Inner>,
}

/// A manifest ready to PUT.
struct Manifest {
    media_type: &'static str,
    body: Bytes,
    digest: String,
}

impl Seeder {
    pub(crate) fn new(base_url: &str, auth: SeederAuth) -> anyhow::Result<Seeder> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build()
            .context("building the seeder's HTTP client")?;
        Ok(Seeder {
            inner: Arc::new(Inner {
                base: base_url.trim_end_matches('/').to_string(),
                http,
                auth,
                tokens: Mutex::new(HashMap::new()),
                blobs: Mutex::new(HashSet::new()),
                manifests: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The same credentials against another base URL, e.g. a [`crate::FaultProxy`] in front of the registry.
    pub fn with_base_url(&self, base_url: &str) -> anyhow::Result<Seeder> {
        Seeder::new(base_url, self.inner.auth.clone())
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Pushes a small synthetic OCI image (config `created` = `created` or absent, unique content per
    /// call, one tiny shared layer) and tags it `tag`. Returns the manifest digest.
    pub async fn push_image(&self, repo: &str, tag: &str, created: Option<&str>) -> anyhow::Result<String> {
        let m = self.build_image(repo, Flavor::Oci, created, "amd64").await?;
        self.put_manifest(repo, tag, &m).await.with_context(|| format!("pushing OCI image {repo}:{tag}"))
    }

    /// Same as [`Seeder::push_image`] with Docker v2 schema 2 media types.
    pub async fn push_docker_image(&self, repo: &str, tag: &str, created: Option<&str>) -> anyhow::Result<String> {
        let m = self.build_image(repo, Flavor::Docker, created, "amd64").await?;
        self.put_manifest(repo, tag, &m).await.with_context(|| format!("pushing Docker image {repo}:{tag}"))
    }

    /// Pushes an OCI image index over two fresh untagged child images (linux/amd64 and linux/arm64)
    /// with the given created times, tagged `tag`. Returns the index digest.
    pub async fn push_index(&self, repo: &str, tag: &str, child_created: [Option<&str>; 2]) -> anyhow::Result<String> {
        let mut entries = Vec::new();
        for (created, arch) in child_created.iter().zip(["amd64", "arm64"]) {
            let m = self.build_image(repo, Flavor::Oci, *created, arch).await?;
            self.put_manifest(repo, &m.digest, &m).await.with_context(|| format!("pushing the {arch} child of index {repo}:{tag}"))?;
            entries.push(json!({
                "mediaType": m.media_type,
                "digest": m.digest,
                "size": m.body.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
        }
        let body = Bytes::from(serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        }))?);
        let m = Manifest { media_type: OCI_INDEX, digest: util::sha256_digest(&body), body };
        self.put_manifest(repo, tag, &m).await.with_context(|| format!("pushing OCI index {repo}:{tag}"))
    }

    /// Pushes a cosign-style signature of `subject` (a manifest this seeder pushed): an OCI
    /// manifest with one `application/vnd.dev.cosign.simplesigning.v1+json` layer and no
    /// `subject` field (cosign's fallback schema names the subject in the tag), tagged
    /// `sha256-<hex>.<suffix>` (`sig`, `att`, `sbom`). Returns the tag and the manifest digest.
    pub async fn push_cosign(&self, repo: &str, subject: &str, suffix: &str) -> anyhow::Result<(String, String)> {
        let payload = Bytes::from(serde_json::to_vec(&json!({
            "critical": {"image": {"docker-manifest-digest": subject}, "type": "cosign container image signature"},
            "optional": {"nonce": util::unique_id()},
        }))?);
        let tag = format!("{}.{suffix}", subject.replace(':', "-"));
        let m = self.build_artifact(repo, None, "application/vnd.dev.cosign.simplesigning.v1+json", payload, None).await?;
        let digest = self.put_manifest(repo, &tag, &m).await.with_context(|| format!("pushing cosign {suffix} {repo}:{tag}"))?;
        Ok((tag, digest))
    }

    /// Pushes an OCI 1.1 artifact (`artifactType`, the empty config, one layer) whose `subject`
    /// is `subject` (a manifest this seeder pushed), under `reference` (a tag, or its own
    /// digest when `None`). Returns the artifact's digest.
    pub async fn push_artifact(&self, repo: &str, reference: Option<&str>, subject: &str, artifact_type: &str) -> anyhow::Result<String> {
        let (media_type, body) = self
            .inner
            .manifests
            .lock()
            .unwrap()
            .get(subject)
            .cloned()
            .ok_or_else(|| anyhow!("push_artifact: {subject} was not pushed by this seeder"))?;
        let subject = json!({"mediaType": media_type, "digest": subject, "size": body.len()});
        let layer = Bytes::from(format!("{{\"artifact\": \"{}\"}}", util::unique_id()));
        let m = self.build_artifact(repo, Some(artifact_type), "application/json", layer, Some(subject)).await?;
        let reference = reference.map_or_else(|| m.digest.clone(), str::to_string);
        self.put_manifest(repo, &reference, &m).await.with_context(|| format!("pushing artifact {repo}:{reference}"))
    }

    async fn build_artifact(
        &self,
        repo: &str,
        artifact_type: Option<&str>,
        layer_type: &str,
        layer: Bytes,
        subject: Option<serde_json::Value>,
    ) -> anyhow::Result<Manifest> {
        const EMPTY: &[u8] = b"{}";
        let size = layer.len();
        let layer_digest = self.ensure_blob(repo, layer).await?;
        let config = self.ensure_blob(repo, Bytes::from_static(EMPTY)).await?;
        let config_type = if artifact_type.is_some() { "application/vnd.oci.empty.v1+json" } else { OCI_CONFIG };
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_type, "digest": config, "size": EMPTY.len()},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": size}],
        });
        if let Some(t) = artifact_type {
            manifest["artifactType"] = json!(t);
        }
        if let Some(subject) = subject {
            manifest["subject"] = subject;
        }
        let body = Bytes::from(serde_json::to_vec(&manifest)?);
        Ok(Manifest { media_type: OCI_MANIFEST, digest: util::sha256_digest(&body), body })
    }

    /// Points `new_tag` at the existing manifest `digest` (one manifest PUT when this seeder pushed it,
    /// otherwise a GET first).
    pub async fn retag(&self, repo: &str, digest: &str, new_tag: &str) -> anyhow::Result<()> {
        let cached = self.inner.manifests.lock().unwrap().get(digest).cloned();
        let (media_type, body) = match cached {
            Some(c) => c,
            None => self.get_manifest(repo, digest).await?,
        };
        let media_type: &'static str = match media_type.as_str() {
            OCI_MANIFEST => OCI_MANIFEST,
            OCI_INDEX => OCI_INDEX,
            DOCKER_MANIFEST => DOCKER_MANIFEST,
            DOCKER_MANIFEST_LIST => DOCKER_MANIFEST_LIST,
            other => bail!("retag {repo}@{digest}: unsupported manifest media type {other:?}"),
        };
        let m = Manifest { media_type, digest: digest.to_string(), body };
        self.put_manifest(repo, new_tag, &m).await.with_context(|| format!("retagging {repo}@{digest} as {new_tag}"))?;
        Ok(())
    }

    /// Pushes `n` OCI images with up to 8 in flight, tagged `{prefix}{i}` with created times from
    /// `created(i)`; returns the digests in index order.
    pub async fn push_many(
        &self,
        repo: &str,
        prefix: &str,
        n: usize,
        created: impl Fn(usize) -> Option<String>,
    ) -> anyhow::Result<Vec<String>> {
        const CONCURRENCY: usize = 8;
        if n == 0 {
            return Ok(Vec::new());
        }
        let created: Arc<Vec<Option<String>>> = Arc::new((0..n).map(created).collect());
        // Upload the shared layer once before fanning out.
        self.ensure_blob(repo, Bytes::from_static(LAYER)).await?;
        let next = Arc::new(AtomicUsize::new(0));
        let results: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n]));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY.min(n) {
            let (seeder, created, next, results) = (self.clone(), created.clone(), next.clone(), results.clone());
            let (repo, prefix) = (repo.to_string(), prefix.to_string());
            workers.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= created.len() {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let tag = format!("{prefix}{i}");
                    let digest = seeder.push_image(&repo, &tag, created[i].as_deref()).await?;
                    results.lock().unwrap()[i] = Some(digest);
                }
            });
        }
        while let Some(joined) = workers.join_next().await {
            joined.context("push_many worker panicked")??;
        }
        let results = std::mem::take(&mut *results.lock().unwrap());
        results.into_iter().enumerate().map(|(i, d)| d.ok_or_else(|| anyhow!("push_many: image {i} was not pushed"))).collect()
    }

    /// The repository's tags, sorted (following `Link` pages when the server paginates); `[]` when the
    /// registry answers `"tags": null`; an error when the repository is unknown (404).
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let mut url = format!("{}/v2/{repo}/tags/list", self.inner.base);
        let mut tags = Vec::new();
        for _ in 0..100_000 {
            let resp = self.send(Method::GET, &url, HeaderMap::new(), None).await?;
            let status = resp.status();
            let link = resp.headers().get(LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
            let body = resp.text().await.unwrap_or_default();
            if status == StatusCode::NOT_FOUND {
                bail!("listing tags of {repo}: repository not found (404): {body}");
            }
            if !status.is_success() {
                bail!("listing tags of {repo}: HTTP {status}: {body}");
            }
            let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("listing tags of {repo}: bad JSON {body:?}"))?;
            if let Some(arr) = v.get("tags").and_then(|t| t.as_array()) {
                tags.extend(arr.iter().filter_map(|t| t.as_str().map(str::to_string)));
            }
            match link {
                Some(next) => {
                    url = Url::parse(&url)?.join(&next).with_context(|| format!("bad Link target {next:?}"))?.to_string();
                }
                None => {
                    tags.sort();
                    return Ok(tags);
                }
            }
        }
        bail!("listing tags of {repo}: too many pages")
    }

    /// The repository names in `/v2/_catalog` (all pages), sorted.
    pub async fn catalog(&self) -> anyhow::Result<Vec<String>> {
        let mut url = format!("{}/v2/_catalog?n=1000", self.inner.base);
        let mut repos = Vec::new();
        loop {
            let resp = self.send(Method::GET, &url, HeaderMap::new(), None).await?;
            let status = resp.status();
            let link = resp.headers().get(LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("listing the catalog: HTTP {status}: {body}");
            }
            let v: serde_json::Value = serde_json::from_str(&body)?;
            if let Some(arr) = v.get("repositories").and_then(|t| t.as_array()) {
                repos.extend(arr.iter().filter_map(|t| t.as_str().map(str::to_string)));
            }
            match link {
                Some(next) => url = Url::parse(&url)?.join(&next)?.to_string(),
                None => {
                    repos.sort();
                    return Ok(repos);
                }
            }
        }
    }

    /// The digest `tag` points at (HEAD with all four manifest types in `Accept`), `None` on 404.
    pub async fn resolve(&self, repo: &str, tag: &str) -> anyhow::Result<Option<String>> {
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.inner.base);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_ALL_MANIFESTS));
        let resp = self.send(Method::HEAD, &url, headers, None).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => {
                let digest = resp
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| anyhow!("resolving {repo}:{tag}: no Docker-Content-Digest header"))?;
                Ok(Some(digest.to_string()))
            }
            s => bail!("resolving {repo}:{tag}: HTTP {s}"),
        }
    }

    /// Deletes the manifest `digest` (and so every tag on it); errors unless the registry answers 202.
    pub async fn delete_manifest(&self, repo: &str, digest: &str) -> anyhow::Result<()> {
        let resp = self.request(Method::DELETE, &format!("/v2/{repo}/manifests/{digest}")).await?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED {
            let body = resp.text().await.unwrap_or_default();
            bail!("deleting {repo}@{digest}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// An authenticated request to `path_and_query` (e.g. `/v2/foo/manifests/sha256:..`) with all four
    /// manifest types in `Accept`; returns the raw response whatever its status.
    pub async fn request(&self, method: Method, path_and_query: &str) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path_and_query}", self.inner.base);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_ALL_MANIFESTS));
        self.send(method, &url, headers, None).await
    }

    async fn get_manifest(&self, repo: &str, reference: &str) -> anyhow::Result<(String, Bytes)> {
        let resp = self.request(Method::GET, &format!("/v2/{repo}/manifests/{reference}")).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            bail!("fetching manifest {repo}@{reference}: HTTP {status}: {body}");
        }
        let media_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Ok((media_type, resp.bytes().await?))
    }

    /// Builds (and uploads the blobs of) a fresh single-platform image.
    async fn build_image(&self, repo: &str, flavor: Flavor, created: Option<&str>, arch: &str) -> anyhow::Result<Manifest> {
        let layer_digest = util::sha256_digest(LAYER);
        let mut config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Labels": {"org.tagwarden.testbed.nonce": util::unique_id()}},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        if let Some(created) = created {
            config["created"] = json!(created);
        }
        let config = Bytes::from(serde_json::to_vec(&config)?);
        let config_digest = util::sha256_digest(&config);
        let config_size = config.len();
        self.ensure_blob(repo, Bytes::from_static(LAYER)).await?;
        self.ensure_blob(repo, config).await?;
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": flavor.manifest(),
            "config": {"mediaType": flavor.config(), "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": flavor.layer(), "digest": layer_digest, "size": LAYER.len()}],
        });
        if flavor == Flavor::Oci {
            manifest["annotations"] = json!({"org.tagwarden.testbed": "fixture"});
        }
        let body = Bytes::from(serde_json::to_vec(&manifest)?);
        Ok(Manifest { media_type: flavor.manifest(), digest: util::sha256_digest(&body), body })
    }

    /// Uploads a blob (POST + PUT) unless this seeder already knows it is there.
    async fn ensure_blob(&self, repo: &str, data: Bytes) -> anyhow::Result<String> {
        let digest = util::sha256_digest(&data);
        let key = (repo.to_string(), digest.clone());
        if self.inner.blobs.lock().unwrap().contains(&key) {
            return Ok(digest);
        }
        let start_url = format!("{}/v2/{repo}/blobs/uploads/", self.inner.base);
        let resp = self.send(Method::POST, &start_url, HeaderMap::new(), Some(Bytes::new())).await?;
        let status = resp.status();
        if status != StatusCode::ACCEPTED {
            let body = resp.text().await.unwrap_or_default();
            bail!("starting a blob upload to {repo}: HTTP {status}: {body}");
        }
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("blob upload to {repo}: 202 without Location"))?;
        let mut put_url = Url::parse(&start_url)?.join(location)?;
        put_url.query_pairs_mut().append_pair("digest", &digest);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let resp = self.send(Method::PUT, put_url.as_str(), headers, Some(data)).await?;
        let status = resp.status();
        if status != StatusCode::CREATED {
            let body = resp.text().await.unwrap_or_default();
            bail!("finishing the upload of {digest} to {repo}: HTTP {status}: {body}");
        }
        self.inner.blobs.lock().unwrap().insert(key);
        Ok(digest)
    }

    async fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> anyhow::Result<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.inner.base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(m.media_type));
        let resp = self.send(Method::PUT, &url, headers, Some(m.body.clone())).await?;
        let status = resp.status();
        let digest = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        if status != StatusCode::CREATED {
            let body = resp.text().await.unwrap_or_default();
            bail!("PUT manifest {repo}:{reference} ({}): HTTP {status}: {body}", m.media_type);
        }
        if let Some(d) = &digest
            && *d != m.digest
        {
            bail!("PUT manifest {repo}:{reference}: registry says {d}, expected {}", m.digest);
        }
        self.inner.manifests.lock().unwrap().insert(m.digest.clone(), (m.media_type.to_string(), m.body.clone()));
        Ok(m.digest.clone())
    }

    /// Sends one request with the seeder's credentials; with token auth, fetches (and caches) a token
    /// for the repository's `pull,push,delete` scope and retries once on a Bearer challenge.
    async fn send(&self, method: Method, url: &str, headers: HeaderMap, body: Option<Bytes>) -> anyhow::Result<reqwest::Response> {
        let mut scope = scope_for(url);
        for attempt in 0..2 {
            let mut rb = self.inner.http.request(method.clone(), url).headers(headers.clone());
            if let Some(b) = &body {
                rb = rb.body(b.clone());
            }
            match &self.inner.auth {
                SeederAuth::None => {}
                SeederAuth::Basic { user, password } => rb = rb.basic_auth(user, Some(password)),
                SeederAuth::Token { .. } => {
                    if let Some(scope) = &scope {
                        rb = rb.bearer_auth(self.token(scope, attempt > 0).await?);
                    }
                }
            }
            let resp = rb.send().await.with_context(|| format!("{method} {url}"))?;
            if attempt == 0 && resp.status() == StatusCode::UNAUTHORIZED && matches!(self.inner.auth, SeederAuth::Token { .. }) {
                let challenge = resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if challenge.to_ascii_lowercase().starts_with("bearer") {
                    let wanted = challenge_param(challenge, "scope").unwrap_or_default();
                    scope = Some(match scope {
                        Some(s) if wanted.is_empty() || s.contains(&wanted) => s,
                        Some(s) => format!("{s} {wanted}"),
                        None => wanted,
                    });
                    continue;
                }
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn token(&self, scope: &str, refresh: bool) -> anyhow::Result<String> {
        if !refresh && let Some(t) = self.inner.tokens.lock().unwrap().get(scope) {
            return Ok(t.clone());
        }
        let SeederAuth::Token { realm, service, user, password } = &self.inner.auth else {
            bail!("no token auth configured");
        };
        let mut url = Url::parse(realm)?;
        url.query_pairs_mut().append_pair("service", service);
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            url.query_pairs_mut().append_pair("scope", s);
        }
        let resp = self
            .inner
            .http
            .get(url.clone())
            .basic_auth(user, Some(password))
            .send()
            .await
            .with_context(|| format!("token request {url}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("token request {url}: HTTP {status}: {body}");
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| anyhow!("token response without a token: {body}"))?
            .to_string();
        self.inner.tokens.lock().unwrap().insert(scope.to_string(), token.clone());
        Ok(token)
    }
}

/// The token scope a URL needs: `repository:<name>:pull,push,delete` for repository routes,
/// `registry:catalog:*` for the catalog, none otherwise.
fn scope_for(url: &str) -> Option<String> {
    let path = Url::parse(url).ok()?.path().to_string();
    let rest = path.strip_prefix("/v2/")?;
    if rest.starts_with("_catalog") {
        return Some("registry:catalog:*".to_string());
    }
    let idx = ["/manifests/", "/blobs/", "/tags/"].iter().filter_map(|m| rest.rfind(m)).max()?;
    Some(format!("repository:{}:pull,push,delete", &rest[..idx]))
}

/// A parameter of a `WWW-Authenticate: Bearer k="v",..` challenge.
fn challenge_param(challenge: &str, key: &str) -> Option<String> {
    let rest = challenge.split_once(' ')?.1;
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let k: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if k.is_empty() {
            return None;
        }
        let v: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        if k.trim().eq_ignore_ascii_case(key) {
            return Some(v);
        }
    }
}

/// The target of a `Link: <url>; rel="next"` header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        params.split(';').any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next").then(|| target.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        assert_eq!(scope_for("http://x/v2/a/b/manifests/latest").as_deref(), Some("repository:a/b:pull,push,delete"));
        assert_eq!(scope_for("http://x/v2/a/blobs/uploads/abc?_state=1").as_deref(), Some("repository:a:pull,push,delete"));
        assert_eq!(scope_for("http://x/v2/_catalog?n=1").as_deref(), Some("registry:catalog:*"));
        assert_eq!(scope_for("http://x/v2/"), None);
    }

    #[test]
    fn challenge() {
        let c = r#"Bearer realm="http://127.0.0.1:1/token",service="svc",scope="repository:a:pull,push""#;
        assert_eq!(challenge_param(c, "scope").as_deref(), Some("repository:a:pull,push"));
        assert_eq!(challenge_param(c, "service").as_deref(), Some("svc"));
        assert_eq!(challenge_param(c, "error"), None);
    }

    #[test]
    fn links() {
        assert_eq!(next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        assert_eq!(next_link(r#"</x>; rel="prev""#), None);
    }
}
