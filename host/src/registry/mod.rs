//! Speaks HTTP to container registries: the OCI distribution API, and GitLab's registry API where
//! the registry offers it.
//!
//! [`RegistryClient`] lists repositories and tags, resolves tags, deletes manifests and tags, and
//! pushes blobs and manifests (test fixtures and GitLab's tag-delete fallback). Layout:
//!
//! - `transport.rs`: the one path every request takes — concurrency permit, credentials (Basic, or
//!   the bearer-token flow with tokens cached per scope), timeout, classification, retries with
//!   exponential backoff and `Retry-After`, request counters ([`RequestStats`]).
//! - `client.rs`: the operations; `listing.rs`: tag lists with digests and creation times;
//!   `gitlab.rs`: GitLab's tags API; `import.rs`: GitLab's repository import API (start,
//!   status, cancel) for the long-running import guard; `media.rs`: manifest and config formats; `auth.rs`:
//!   [`Credentials`], [`Secret`] and `WWW-Authenticate` parsing; `error.rs`: [`RegistryError`].
//!
//! How a tag list is built on a plain OCI registry: list tag names (following `Link` pages, sorting
//! ourselves), `HEAD` each tag's manifest for its digest, and for each *distinct* digest not in the
//! [`MetadataCache`](crate::store::MetadataCache): `GET` the manifest (media type, size, config
//! digest) and the config blob (`created`). An image without `created` in its config falls back to
//! the `org.opencontainers.image.created` annotation, else has no creation time. An index
//! (multi-arch image) has no config: its creation time is the **newest** of its children's
//! (children whose manifests are gone are skipped), and its size the sum of theirs. What each index
//! references is cached with it and put in the list ([`TagList::index_children`]), so that the
//! deletion planner never deletes a platform image of a kept multi-arch tag. On a warm cache a tag
//! costs one `HEAD`.
//!
//! When the registry answers `GET /gitlab/v1/` (200 or 401), tag lists come from GitLab's tags API
//! instead: one request per 1,000 tags, with digests, sizes and times included; each index manifest
//! is then read once (and cached) for what it references.
//!
//! [`TagList::index_children`]: crate::model::TagList::index_children
//!
//! Architecture invariants:
//! - This is the only module that speaks HTTP to registries; nothing here touches wasmtime.
//! - Credentials and tokens never appear in logs, errors or `Debug` output ([`Secret`]), and are
//!   only sent to the configured registry's origin (and, for token requests, to its token realm).
//! - Errors name the request, the repository and what the registry said; their [`ErrorClass`] is
//!   what retry logic and backoff plugins branch on.

mod auth;
mod client;
mod error;
mod gitlab;
mod import;
mod listing;
mod media;
mod transport;

use std::time::Duration;

pub use auth::{Credentials, Secret, redact_userinfo};
pub use client::{ManifestContent, RegistryClient, is_valid_repository_name, is_valid_tag, validate_repository_name, validate_tag};
pub use error::{RegistryError, RequestLine};
pub use import::{CancelOutcome, ImportStart, ImportType, RegistryImportStatus};
pub use media::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, References, references,
};
pub use transport::RequestStats;

#[allow(unused_imports)] // for the docs above
use crate::model::ErrorClass;

/// How to reach one registry and how hard to try.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL, e.g. `http://127.0.0.1:5000` (the API lives under `/v2/`).
    pub url: url::Url,
    pub credentials: Credentials,
    /// Limit for each request, from sending to the last byte of the answer.
    pub request_timeout: Duration,
    /// Most requests in flight at once.
    pub concurrency: usize,
    /// Retries of one request after a transient failure, a 429 or a timeout.
    pub max_retries: u32,
    /// The longest `Retry-After` honoured; a registry asking for longer fails the request with
    /// [`ErrorClass::RateLimited`] so the caller (or a backoff plugin) can decide.
    pub max_retry_after: Duration,
}

impl RegistryConfig {
    /// Defaults for the registry at `url`: anonymous, 30 s per request, 8 in flight, 3 retries,
    /// `Retry-After` honoured up to 60 s.
    pub fn new(url: url::Url) -> Self {
        RegistryConfig {
            url,
            credentials: Credentials::Anonymous,
            request_timeout: Duration::from_secs(30),
            concurrency: 8,
            max_retries: 3,
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl Default for RegistryConfig {
    /// The defaults of [`RegistryConfig::new`] with a placeholder URL (`http://localhost:5000`)
    /// that the caller must replace.
    fn default() -> Self {
        RegistryConfig::new(url::Url::parse("http://localhost:5000").expect("a valid URL"))
    }
}

/// What a manifest delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    /// The registry no longer had it (404): as good as deleted.
    AlreadyGone,
}

/// What a tag delete (OCI 1.1 `DELETE /v2/<name>/manifests/<tag>`) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagDeleteOutcome {
    Deleted,
    AlreadyGone,
    /// The registry cannot delete single tags (distribution 2.8 answers `400 DIGEST_INVALID`).
    /// Remembered by the client: later calls answer this without a request.
    Unsupported,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_output_has_no_password() {
        let mut config = RegistryConfig::new(url::Url::parse("https://registry.example.com").unwrap());
        config.credentials = Credentials::Basic { username: "robot".into(), password: Secret::new("s3cr3t-pa55") };
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t-pa55"), "{debug}");
        assert!(debug.contains("robot"));
        let client = RegistryClient::new(config, None).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("s3cr3t-pa55"), "{debug}");
    }

    #[test]
    fn the_client_and_its_futures_can_move_between_threads() {
        fn shareable<T: Send + Sync + Clone + 'static>() {}
        fn send<T: Send>(_: &T) {}
        shareable::<RegistryClient>();
        let client = RegistryClient::new(RegistryConfig::default(), None).unwrap();
        let progress = |_: usize, _: usize| {};
        send(&client.tag_list("app", &progress));
        send(&client.delete_tag("app", "v1"));
        send(&client.push_blob("app", Vec::new()));
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let c = RegistryConfig::default();
        assert_eq!(
            (c.request_timeout, c.concurrency, c.max_retries, c.max_retry_after),
            (Duration::from_secs(30), 8, 3, Duration::from_secs(60))
        );
        assert_eq!(c.credentials, Credentials::Anonymous);
    }
}
