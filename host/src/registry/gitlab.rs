//! GitLab's registry API (`/gitlab/v1/`): tag lists with digests, sizes and times in one request
//! per 1,000 tags, instead of three requests per tag.

use serde::Deserialize;

use super::auth::Scope;
use super::client::{RegistryClient, tag_list_or_error};
use super::error::RegistryError;
use super::transport::Kind;
use crate::model::{Digest, MediaType, Tag, TagList, Timestamp};

/// One entry of `GET /gitlab/v1/repositories/<path>/tags/list/`.
#[derive(Debug, Deserialize)]
struct GitlabTag {
    name: String,
    digest: String,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    published_at: Option<String>,
}

/// The repository's tags from GitLab's tags API, `None` when the repository is unknown.
/// `pushed_at` is `updated_at` (the tag's last move), else `published_at`.
pub(super) async fn tag_list(client: &RegistryClient, repo: &str) -> Result<Option<TagList>, RegistryError> {
    // The trailing slash is part of the route; n ranges 1-1000.
    let first = client.url(&format!("/gitlab/v1/repositories/{repo}/tags/list/?n=1000"));
    let entries = client
        .pages(Kind::TagList, first, Some(repo), Scope::Pull(repo.to_string()), |body| serde_json::from_slice::<Vec<GitlabTag>>(body))
        .await?;
    let Some(entries) = entries else {
        return Ok(None);
    };
    let mut tags: Vec<Tag> = Vec::with_capacity(entries.len());
    for entry in entries {
        let digest = Digest::parse(&entry.digest).map_err(|e| invalid(client, repo, &entry.name, &format!("{e:#}")))?;
        let time = |field: &Option<String>, what: &str| -> Result<Option<Timestamp>, RegistryError> {
            field
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| Timestamp::parse_rfc3339(s).map_err(|e| invalid(client, repo, &entry.name, &format!("{what}: {e:#}"))))
                .transpose()
        };
        let created_at = time(&entry.created_at, "created_at")?;
        let pushed_at = time(&entry.updated_at, "updated_at")?.or(time(&entry.published_at, "published_at")?);
        tags.push(Tag {
            created_at,
            pushed_at,
            size_bytes: entry.size_bytes,
            media_type: entry.media_type.filter(|m| !m.is_empty()).map(MediaType::from),
            ..Tag::new(entry.name, digest)
        });
    }
    // Pages may overlap when tags are pushed while we list: the later entry wins.
    tags.reverse();
    let mut seen = std::collections::HashSet::new();
    tags.retain(|t| seen.insert(t.name.clone()));
    let list = tag_list_or_error(client, repo, TagList::new(repo, tags, Vec::new()))?;
    client.with_index_children(repo, list).await.map(Some)
}

fn invalid(client: &RegistryClient, repo: &str, tag: &str, what: &str) -> RegistryError {
    let url = client.url(&format!("/gitlab/v1/repositories/{repo}/tags/list/"));
    client.permanent_error(reqwest::Method::GET, url, repo, format!("GitLab tags API: tag `{tag}`: {what}"))
}
